"""``python -m grove.flows.cli`` = ``grove``."""

from grove.flows.cli import run

if __name__ == "__main__":  # not when a spawned worker (torch.distributed launcher) re-imports it
    run()
