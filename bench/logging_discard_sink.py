"""A served-log writer process that writes nothing: experiment (a) of bench/logging_overhead.py `--discard`.

It receives and unmarshals every message like `featuremart.servedlog.sink`, answers flush requests and counts
every record's rows as written, but builds no Arrow rows and writes no Parquet: a log with this writer costs the
reading process what the real one does (encoding, sending) and the machine almost nothing else, which separates
the reader-side cost of logging from the writer process's.
"""

from __future__ import annotations

import sys

from featuremart.servedlog import sink


class DiscardingSink(sink.Sink):
    def take(self) -> tuple[bool, list[int]]:
        closed, tokens = False, []
        for item in self.messages():
            if item is None:
                closed = True
            elif item[0] == "flush":
                tokens.append(item[1])
            else:
                self.counts["written"] += item[-1]
        return closed, tokens


if __name__ == "__main__":
    sink.Sink = DiscardingSink  # main() builds the Sink it names
    sys.exit(sink.main(sys.argv[1:]))
