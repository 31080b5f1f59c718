#!/bin/bash
# Measures the webhook triggers' cost on terminal job updates (no webhook configured).
# Run from the repository root: scripts/bench/webhook_triggers.sh (uses a scratch database wh_bench).
set -e
P="psql -h 127.0.0.1 -U postgres -q -v ON_ERROR_STOP=1"
$P -c "drop database if exists wh_bench" -c "create database wh_bench"
for f in migrations/*.sql; do $P -d wh_bench -f $f; done
gen() { # $1 = with batch (yes/no)
  $P -d wh_bench -c "truncate jobs cascade; delete from batches; delete from webhook_batch_progress" 
  $P -d wh_bench -c "insert into tenants values ('t') on conflict do nothing"
  $P -d wh_bench -c "insert into batches (id, tenant) select 'b'||g, 't' from generate_series(0,99) g"
  $P -d wh_bench -c "insert into jobs (id, tenant, batch_id, model, deployments, request, max_tokens, max_attempts, status, attempted_by)
     select 'job_'||lpad(g::text,6,'0'), 't', case when '$1'='yes' then 'b'||(g%100) end, 'm', '[]', '{\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}]}', 10, 1, 'running', 'w' from generate_series(0,39999) g"
  $P -d wh_bench -c "vacuum analyze jobs"
  : > /tmp/h4_bench.sql
  for i in $(seq 0 399); do
    echo "update jobs set status='succeeded', finalized_at=now(), response='{\"id\":\"x\"}', output_tokens=5 where id >= 'job_$(printf %06d $((i*100)))' and id < 'job_$(printf %06d $((i*100+100)))';" >> /tmp/h4_bench.sql
  done
}
run() { local s=$(date +%s.%N); $P -d wh_bench -f /tmp/h4_bench.sql; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
for batch in no yes; do
  for mode in off on off on; do
    gen $batch
    if [ $mode = off ]; then $P -d wh_bench -c "alter table jobs disable trigger jobs_webhooks_terminal; alter table jobs disable trigger jobs_webhooks_batch_settle"; 
    else $P -d wh_bench -c "alter table jobs enable trigger jobs_webhooks_terminal; alter table jobs enable trigger jobs_webhooks_batch_settle"; fi
    echo "batch_jobs=$batch triggers=$mode: 400 statements x 100 jobs -> terminal in $(run) s"
  done
done
$P -c "drop database wh_bench"
