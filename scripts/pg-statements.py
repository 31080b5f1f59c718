#!/usr/bin/env python3
"""Where Postgres spent its statement time: sums the durations Postgres logged, by statement.

Log every statement's duration while a run lasts, then aggregate the log lines it wrote:

    L=/var/log/postgresql/postgresql-15-main.log; FROM=$(wc -l < $L)
    psql -h 127.0.0.1 -U postgres -c "ALTER ROLE postgres SET log_min_duration_statement = 0"
    ./target/release/sluice bench e2e --jobs 20000
    psql -h 127.0.0.1 -U postgres -c "ALTER ROLE postgres RESET log_min_duration_statement"
    tail -n +$FROM $L > /tmp/statements.log && scripts/pg-statements.py /tmp/statements.log 25

Prints the total, then one line per (step, statement): total ms, count, ms each, the step
(`parse`, `bind`, `execute`, or `statement` for the simple protocol) and the statement's start.
"""
import collections
import re
import signal
import sys

# Piped into `head`, stop quietly.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
DURATION = re.compile(r"duration: ([0-9.]+) ms\s+(statement|parse [^:]*|bind [^:]*|execute [^:]*):\s*(.*)")


def entries(path):
    """Log entries, each with its continuation lines joined."""
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            if ENTRY.match(line):
                if current:
                    yield current
                current = line.rstrip("\n")
            elif current is not None:
                current += " " + line.strip()
    if current:
        yield current


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: scripts/pg-statements.py POSTGRES_LOG [LINES]")
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    total_ms = collections.Counter()
    count = collections.Counter()
    by_step = collections.Counter()
    for entry in entries(sys.argv[1]):
        m = DURATION.search(entry)
        if not m:
            continue
        ms, step = float(m.group(1)), m.group(2).split()[0]
        text = re.sub(r"DETAIL:.*", "", " ".join(m.group(3).split()))[:90]
        total_ms[(step, text)] += ms
        count[(step, text)] += 1
        by_step[step] += ms
    print(f"{sum(by_step.values()):.0f} ms over {sum(count.values())} entries;",
          ", ".join(f"{s} {ms:.0f} ms" for s, ms in by_step.most_common()))
    for (step, text), ms in total_ms.most_common(lines):
        n = count[(step, text)]
        print(f"{ms:9.0f} ms {n:7d}x {ms / n:8.3f} {step:9s} {text}")


if __name__ == "__main__":
    main()
