/*
 * namespace -- every global symbol of libtally starts with "tally".
 *
 * A program that links the static library may have its own json_parse()
 * or buf_init(); tally's must not clash with them.  The library's internal
 * names stay short in the source (json_parse, store_open) and this header,
 * given to every compilation of the library's sources with -include
 * (CMakeLists.txt), renames them to tally__<name> in the object files.
 *
 * A new internal function with external linkage needs a line here: CI's
 * scripts/check-symbols fails on any global symbol of libtally.a or
 * libtally.so that does not start with "tally".
 */
#ifndef TALLY_NAMESPACE_H
#define TALLY_NAMESPACE_H

#define agg_cell_add tally__agg_cell_add
#define agg_cell_decode_merge tally__agg_cell_decode_merge
#define agg_cell_encode tally__agg_cell_encode
#define agg_cell_free tally__agg_cell_free
#define agg_cell_init tally__agg_cell_init
#define agg_cell_merge tally__agg_cell_merge
#define agg_cell_merge_lean tally__agg_cell_merge_lean
#define agg_cell_reset tally__agg_cell_reset
#define agg_kind tally__agg_kind
#define buf_free tally__buf_free
#define buf_grow tally__buf_grow
#define buf_init tally__buf_init
#define ch_columns tally__ch_columns
#define ch_create_schema tally__ch_create_schema
#define ch_is_url tally__ch_is_url
#define ch_query_lines tally__ch_query_lines
#define ch_request tally__ch_request
#define ch_row_json tally__ch_row_json
#define ch_target_free tally__ch_target_free
#define ch_target_init tally__ch_target_init
#define enc_double tally__enc_double
#define enc_i64 tally__enc_i64
#define enc_iso8601 tally__enc_iso8601
#define enc_str tally__enc_str
#define enc_us_as_seconds tally__enc_us_as_seconds
#define energy_begin tally__energy_begin
#define energy_devices tally__energy_devices
#define energy_end tally__energy_end
#define energy_free tally__energy_free
#define energy_new_manual tally__energy_new_manual
#define energy_of tally__energy_of
#define energy_ready_until tally__energy_ready_until
#define energy_start tally__energy_start
#define energy_stop tally__energy_stop
#define energy_tick tally__energy_tick
#define energy_util tally__energy_util
#define get_f64 tally__get_f64
#define get_uvarint tally__get_uvarint
#define hindex_clear tally__hindex_clear
#define hindex_fit tally__hindex_fit
#define hindex_free tally__hindex_free
#define idset_add tally__idset_add
#define idset_free tally__idset_free
#define idset_init tally__idset_init
#define iso8601_parse tally__iso8601_parse
#define json_arena_free tally__json_arena_free
#define json_arena_init tally__json_arena_init
#define json_arena_reset tally__json_arena_reset
#define json_parse tally__json_parse
#define json_parse_inplace tally__json_parse_inplace
#define jv_get tally__jv_get
#define jv_getn tally__jv_getn
#define jv_int tally__jv_int
#define jv_num tally__jv_num
#define jv_str tally__jv_str
#define jv_write tally__jv_write
#define metrics_add tally__metrics_add
#define metrics_foreach tally__metrics_foreach
#define metrics_free tally__metrics_free
#define metrics_hist tally__metrics_hist
#define metrics_http_forget tally__metrics_http_forget
#define metrics_http_port tally__metrics_http_port
#define metrics_http_start tally__metrics_http_start
#define metrics_http_stop tally__metrics_http_stop
#define metrics_listen_parse tally__metrics_listen_parse
#define metrics_new tally__metrics_new
#define metrics_observe tally__metrics_observe
#define metrics_overflowed tally__metrics_overflowed
#define metrics_render tally__metrics_render
#define metrics_series tally__metrics_series
#define metrics_set tally__metrics_set
#define otlp_exporter_add tally__otlp_exporter_add
#define otlp_exporter_after_fork tally__otlp_exporter_after_fork
#define otlp_exporter_close tally__otlp_exporter_close
#define otlp_exporter_lost tally__otlp_exporter_lost
#define otlp_exporter_open tally__otlp_exporter_open
#define otlp_exporter_seal tally__otlp_exporter_seal
#define otlp_exporter_sent tally__otlp_exporter_sent
#define otlp_metrics tally__otlp_metrics
#define otlp_parse_headers tally__otlp_parse_headers
#define otlp_resource tally__otlp_resource
#define otlp_span tally__otlp_span
#define otlp_traces_begin tally__otlp_traces_begin
#define otlp_traces_end tally__otlp_traces_end
#define prices_cost tally__prices_cost
#define prices_free tally__prices_free
#define prices_load tally__prices_load
#define prices_parse tally__prices_parse
#define put_f64 tally__put_f64
#define put_uvarint tally__put_uvarint
#define read_sqlite tally__read_sqlite
#define read_sqlite_kind tally__read_sqlite_kind
#define request_key_index tally__request_key_index
#define ring_new tally__ring_new
#define ring_release tally__ring_release
#define ring_reset tally__ring_reset
#define rollup_add tally__rollup_add
#define rollup_cells tally__rollup_cells
#define rollup_clear tally__rollup_clear
#define rollup_each tally__rollup_each
#define rollup_free tally__rollup_free
#define rollup_key_decode tally__rollup_key_decode
#define rollup_key_encode tally__rollup_key_encode
#define rollup_key_row tally__rollup_key_row
#define rollup_minute tally__rollup_minute
#define rollup_new tally__rollup_new
#define row_clear tally__row_clear
#define row_ctx_init tally__row_ctx_init
#define row_from_json tally__row_from_json
#define row_take_run_model tally__row_take_run_model
#define row_strings tally__row_strings
#define sink_callback_open tally__sink_callback_open
#define sink_jsonl_open tally__sink_jsonl_open
#define sink_memory_count tally__sink_memory_count
#define sink_memory_foreach tally__sink_memory_foreach
#define sink_memory_open tally__sink_memory_open
#define sink_metrics_open tally__sink_metrics_open
#define sink_metrics_port tally__sink_metrics_port
#define sink_metrics_table tally__sink_metrics_table
#define sink_otlp_open tally__sink_otlp_open
#define sink_sqlite_open tally__sink_sqlite_open
#define sketch_add tally__sketch_add
#define sketch_decode_merge tally__sketch_decode_merge
#define sketch_encode tally__sketch_encode
#define sketch_free tally__sketch_free
#define sketch_init tally__sketch_init
#define sketch_merge tally__sketch_merge
#define sketch_quantile tally__sketch_quantile
#define sketch_reset tally__sketch_reset
#define store_add_cells tally__store_add_cells
#define store_begin tally__store_begin
#define store_cell_merge_fn tally__store_cell_merge_fn
#define store_ckpt_bound tally__store_ckpt_bound
#define store_busy tally__store_busy
#define store_ckpt_start tally__store_ckpt_start
#define store_ckpt_stop tally__store_ckpt_stop
#define store_close tally__store_close
#define store_column_at tally__store_column_at
#define store_commit tally__store_commit
#define store_db tally__store_db
#define store_drop_text tally__store_drop_text
#define store_errmsg tally__store_errmsg
#define store_has_column tally__store_has_column
#define store_insert tally__store_insert
#define store_insert_rows tally__store_insert_rows
#define store_open tally__store_open
#define store_open_db_readonly tally__store_open_db_readonly
#define store_rollback tally__store_rollback
#define store_row_from_stmt tally__store_row_from_stmt
#define store_run_line tally__store_run_line
#define store_scan_time tally__store_scan_time
#define store_select tally__store_select
#define store_seq_base tally__store_seq_base
#define store_sql_events tally__store_sql_events
#define store_sql_init tally__store_sql_init
#define store_sql_insert tally__store_sql_insert
#define store_sql_insert_head tally__store_sql_insert_head
#define store_sql_insert_row tally__store_sql_insert_row
#define store_sql_rollup tally__store_sql_rollup
#define store_sql_upsert tally__store_sql_upsert
#define store_trim tally__store_trim
#define store_version tally__store_version
#define store_write_cells tally__store_write_cells
#define utf8_cut tally__utf8_cut
#define writer_start tally__writer_start
#define writer_stop tally__writer_stop
#define writer_stop_within tally__writer_stop_within

#endif
