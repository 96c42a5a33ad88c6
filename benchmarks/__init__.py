"""Benchmarks behind `trajfm bench NAME --out FILE.json`: each module has `main(out: Path)`."""
