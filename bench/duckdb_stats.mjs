// duckdb_stats -- DuckDB asked the question `tally stats --by model` answers,
// over the same JSONL file, for bench/stats_bench.sh: per model, requests,
// prompt and completion token sums, mean, p50 and p99 latency, with the
// schema given explicitly (no sampling to infer it).  Prints the answer as
// JSON and, last, `seconds=S` for the query alone.
//
//   node duckdb_stats.mjs FILE      (run where @duckdb/node-api is installed)
import { DuckDBInstance } from '@duckdb/node-api';

const file = process.argv[2];
if (!file) {
    console.error('usage: node duckdb_stats.mjs FILE');
    process.exit(2);
}
const quoted = file.replaceAll("'", "''");
const sql = `
SELECT extra.model AS model, count(*) AS requests,
       sum(extra.prompt_tokens) AS prompt_tokens, sum(extra.completion_tokens) AS completion_tokens,
       avg(extra.latency_us) / 1000 AS latency_mean_ms,
       quantile_cont(extra.latency_us, 0.5) / 1000 AS latency_p50_ms,
       quantile_cont(extra.latency_us, 0.99) / 1000 AS latency_p99_ms
FROM read_json('${quoted}', format = 'newline_delimited', ignore_errors = true,
     columns = {kind: 'VARCHAR', name: 'VARCHAR',
                extra: 'STRUCT(model VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT, latency_us BIGINT)'})
WHERE kind = 'eval' AND name = 'request'
GROUP BY 1 ORDER BY 1`;
const db = await DuckDBInstance.create(':memory:');
const con = await db.connect();
const t0 = performance.now();
const reader = await con.runAndReadAll(sql);
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify(reader.getRowObjectsJson()));
console.log(`seconds=${seconds.toFixed(3)}`);
