"""``python -m benchmarks.quality``."""

from benchmarks.quality.cli import main

if __name__ == "__main__":
    from grove.flows.quiet_exit import exit_quietly

    main()
    exit_quietly(0)
