#!/usr/bin/env python3
"""Where the machine's CPU went during a profiled load phase.

Reads `perf script -F pid,comm,ip,sym,dso --hide-call-graph` on standard
input and, with --pids FILE, the "name pid" lines the load harness writes
for the processes it started (identity, audit, vault-1, ..., load
generator). Prints two markdown tables: the share of all samples each
process took, split into kinds of work (kernel, TLS, HTTP/2 and gRPC,
database client, tracing, allocator, async runtime, own code, other), and
the functions that took the most samples in the process that took the most.

Used by scripts/bench.sh --profile; exits non-zero only on bad input.
"""

import argparse
import collections
import re
import sys

KINDS = [
    ("kernel", None),
    ("TLS and crypto", re.compile(r"^(rustls|tokio_rustls|aws_lc|ring|aead|aes|ghash|sha2|ed25519|curve25519)|aes_gcm|gcm_|sha256|chacha|poly1305|^(EVP|SSL|ssl|tls|OPENSSL|ERR)_|bn_|x25519")),
    ("HTTP/2 and gRPC", re.compile(r"^(h2|hyper|hyper_util|http|http_body|http_body_util|tonic|tower|tower_http|prost|bytes|axum|tonic_prost)::")),
    ("database client", re.compile(r"^(sqlx|sqlx_core|sqlx_postgres|sqlx_sqlite|redis|combine)::")),
    ("tracing and metrics", re.compile(r"^(tracing|tracing_core|tracing_subscriber|tracing_opentelemetry|opentelemetry|opentelemetry_sdk|sharded_slab|nu_ansi_term)::")),
    ("allocator and copies", re.compile(r"malloc|free|realloc|calloc|memmove|memcpy|memset|memcmp|_int_|unlink_chunk|__rdl_|__rust_alloc|__rust_dealloc|alloc::")),
    ("async runtime", re.compile(r"^(tokio|tokio_util|futures|futures_util|futures_core|mio|parking_lot|crossbeam)::|epoll|futex|pthread")),
    ("own code", re.compile(r"^(confidant|confidant_[a-z]+)::")),
]


def kind_of(sym, dso):
    if dso.startswith("[kernel"):
        return "kernel"
    name = sym.lstrip("<&* ")
    for kind, pattern in KINDS[1:]:
        if pattern.search(name):
            return kind
    if "libcrypto" in dso or "libssl" in dso:
        return "TLS and crypto"
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pids", help="file of 'name pid' lines")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    names = {}
    if args.pids:
        with open(args.pids) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    names[int(parts[1])] = parts[0]

    line_re = re.compile(r"^\s*(.+?)\s+(\d+)\s+([0-9a-f]+)\s+(.*)\s+\((.*)\)\s*$")
    by_process = collections.defaultdict(collections.Counter)
    symbols = collections.defaultdict(collections.Counter)
    total = 0
    for line in sys.stdin:
        m = line_re.match(line)
        if not m:
            continue
        comm, pid, _ip, sym, dso = m.groups()
        pid = int(pid)
        if pid == 0:
            continue  # idle
        process = names.get(pid) or comm
        total += 1
        by_process[process][kind_of(sym, dso)] += 1
        symbols[process][(sym, dso)] += 1
    if total == 0:
        print("no samples", file=sys.stderr)
        return 1

    kinds = [k for k, _ in KINDS] + ["other"]
    print("| process | share of busy samples | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    ranked = sorted(by_process.items(), key=lambda kv: -sum(kv[1].values()))
    for process, counts in ranked:
        n = sum(counts.values())
        if n * 200 < total:
            continue  # under half a percent
        cells = [f"{100 * counts[k] / n:.0f}%" for k in kinds]
        print(f"| {process} | {100 * n / total:.1f}% | " + " | ".join(cells) + " |")
    print()
    # The two busiest processes (the database and the busiest service).
    for top_process, top_counts in ranked[:2]:
        n = sum(top_counts.values())
        print(f"Functions taking the most of {top_process}'s samples:")
        print()
        print("| share of the process | kind | function |")
        print("|---|---|---|")
        for (sym, dso), count in symbols[top_process].most_common(args.top):
            if sym == "[unknown]":
                sym = f"[unknown] in {dso.rsplit('/', 1)[-1]}"
            short = sym if len(sym) <= 110 else sym[:107] + "..."
            short = short.replace("|", "\\|")
            print(f"| {100 * count / n:.1f}% | {kind_of(sym, dso)} | `{short}` |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
