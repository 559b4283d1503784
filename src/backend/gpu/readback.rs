//! Token readback: the choices argmax wrote to the token ring come back to the host through
//! mappable copies, a step or more after they were made; plus plain reads of a buffer.

use super::device::GpuBackend;
use crate::error::{Error, Result};

/// Choices (argmax dispatches, one token per row) the token ring remembers besides one per
/// possible batch row: more than a batched run ever leaves unread (a prompt's first token for
/// each slot refilled, plus `GpuBackend::steps_ahead` + 1 steps), so a choice is read before
/// argmax writes its slots again. Each choice owns `max_rows` slots of the ring.
pub(super) const SPARE_CHOICES: usize = 16;

/// A token chosen on the GPU: its slot in the token ring, and which choice it was (a choice's
/// slots are reused after every other choice's; a stale token is refused, never misread).
#[derive(Clone, Debug)]
pub struct GpuToken {
    /// The ring slot: `choice * max_rows + row`.
    pub(super) slot: usize,
    pub(super) row: usize,
    pub(super) issued: u64,
}

/// The host side of one choice: a mappable copy of its ids, mapped as soon as the step that
/// wrote them is submitted, and read when the host gets to the first of them.
pub(super) struct Choice {
    pub(super) staging: wgpu::Buffer,
    pub(super) issued: u64,
    pub(super) rows: usize,
    /// Watched logits per row (`Backend::choose`'s `watch`), copied after the ids.
    pub(super) watched: usize,
    pub(super) map: Option<MapReceiver>,
    /// The submit that writes it (`Counters::submits` after it) and its index for waiting.
    pub(super) submit: u64,
    pub(super) index: Option<wgpu::SubmissionIndex>,
    /// What was read: the ids, then each row's watched logits.
    pub(super) values: Option<Vec<u32>>,
}

impl GpuBackend {
    /// A token whose slot has not been reused since it was chosen.
    pub(super) fn check_token(&self, token: &GpuToken) -> Result<()> {
        let choices = self.choices.borrow();
        if choices[(token.issued % choices.len() as u64) as usize].issued != token.issued {
            return Err(Error::Backend(format!(
                "token of choice {} was overwritten: more than {} choices were made after it",
                token.issued,
                choices.len()
            )));
        }
        Ok(())
    }

    /// A copy into a mappable buffer for a readback: it ends the open compute pass (a step has
    /// no other copy).
    pub(super) fn copy_for_readback(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        let mut pending = self.pending.borrow_mut();
        pending.pass = None;
        self.count(|c| c.readback_copies += 1);
        let device = &self.device;
        let encoder = pending.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") })
        });
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Submit, then copy `bytes` from `src` to the host.
    pub(super) async fn read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let staging = {
            let mut slot = self.readback.borrow_mut();
            match slot.take() {
                Some((b, size)) if size >= bytes => b,
                _ => self.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: bytes.max(4),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
            }
        };
        self.copy_for_readback(src, 0, &staging, 0, bytes);
        self.flush();
        let rx = map_for_read(&staging, bytes);
        // Natively this drives the GPU to completion; on the web it does nothing and the
        // browser resolves the map when the work is done.
        let waited = web_time::Instant::now();
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        let mapped =
            rx.await.map_err(|_| self.lost_or(Error::Backend("GPU readback was dropped (device lost?)".into())))?;
        let wait_us = waited.elapsed().as_secs_f64() * 1e6;
        self.count(|c| {
            c.blocking_waits += 1;
            c.wait_us += wait_us;
        });
        self.check_errors()?;
        mapped.map_err(|e| self.lost_or(Error::Backend(format!("GPU readback failed: {e}"))))?;
        let data = staging
            .get_mapped_range(0..bytes)
            .map_err(|e| Error::Backend(format!("GPU readback failed: {e}")))?
            .to_vec();
        staging.unmap();
        let size = staging.size();
        *self.readback.borrow_mut() = Some((staging, size));
        Ok(data)
    }
}

pub(super) type MapReceiver = futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Ask for `buffer[0..bytes]` to be mapped for reading once the GPU is done with it.
pub(super) fn map_for_read(buffer: &wgpu::Buffer, bytes: u64) -> MapReceiver {
    let (tx, rx) = futures_channel::oneshot::channel();
    buffer.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
        let _ = tx.send(r);
    });
    rx
}
