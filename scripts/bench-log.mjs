// The JSON-lines log the benchmark scripts keep (browser-cpu-bench.mjs, verdict-bench.mjs): one
// result a line in `<dir>/results.jsonl`, emptied at the start, each result echoed to stderr.
import fs from "node:fs";
import path from "node:path";

export function resultsLog(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, "results.jsonl");
  fs.writeFileSync(file, "");
  return {
    file,
    record(r) {
      fs.appendFileSync(file, JSON.stringify(r) + "\n");
      console.error(JSON.stringify(r));
    },
    /** Every result recorded so far. */
    rows: () => fs.readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l)),
  };
}
