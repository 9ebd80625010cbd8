"""Entry point: ``python -m bench.fingerprint``."""

from bench.fingerprint.run import main

if __name__ == "__main__":
    raise SystemExit(main())
