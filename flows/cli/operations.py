"""Operating commands of ``grove``: schedule, promote, serve, report (issue 6).

    grove schedule INDEX [INDEX ...] --cron "0 3 * * *" [--method M --rounds N --data FILE --gate-... ]
    grove schedule INDEX [INDEX ...] --once [--local] [same options]
    (either with [--task-runner thread|ray|dask [--runner-address ADDR] [--workers N]])
    grove promote INDEX VERSION [--gate-metric recall --gate-k 10 --gate-beam 50 --tolerance T]
    grove serve INDEX [--alias production] [--host 127.0.0.1] [--port 8000] [--device auto]
    grove report INDEX [--out PATH] [--format html|md]

(``grove rollback INDEX [--to V] [--alias A]`` is a store command, `grove.flows.cli.store`.)

``schedule --cron`` serves the `retrain` deployment (`grove.flows.schedule.serve_retrain`) against the
Prefect server at PREFECT_API_URL and blocks until interrupted; the cron line, the index, the
method and the data file are checked before anything starts. ``--once`` runs the retrain flow
now (``--local`` / GROVE_LOCAL=1: the same steps in-process, without Prefect). Several indexes
are retrained in one flow run (``retrain-indexes``), each index's chain beside the others' on a
task runner (`grove.flows.runners`). ``promote`` runs
the promotion gate for one version (exit 0 promoted, 1 rejected). Prefect is imported only by
the commands that need it.
"""

from __future__ import annotations

import argparse
import os

from grove.flows.cli.common import add_precision_opts, add_runner_opts, is_local, one_int, open_store, runner_spec
from grove.indexstore.errors import GroveError, InputError


def _beam(text: str) -> int | None:
    if text.strip().lower() in ("exhaustive", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'exhaustive', got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'exhaustive', got {text!r}")
    return value


def _gate_opts(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("promotion gate (grove.flows.gate.GateConfig)")
    g.add_argument("--gate-metric", default="recall", help="stored metric name")
    g.add_argument("--gate-k", type=int, default=10, help="cut-off of the metric")
    g.add_argument("--gate-beam", type=_beam, default=50, help="beam of the metric, or 'exhaustive'")
    g.add_argument("--gate-role", default="valid", help="held-out users the metric is read on (valid or test)")
    g.add_argument("--gate-filtered", action="store_true", help="use the seen-items-filtered metric")
    g.add_argument(
        "--tolerance", type=float, default=0.0, help="promote when candidate >= production - tolerance (absolute)"
    )
    p.add_argument("--users", type=int, default=None, help="evaluate on the first N held-out users")


def gate_settings(args) -> dict:
    """The gate options as a `GateConfig` dict (validated: GroveError on a bad value)."""
    from dataclasses import asdict

    from grove.flows.gate import GateConfig

    return asdict(
        GateConfig(
            metric=args.gate_metric,
            k=args.gate_k,
            beam=args.gate_beam,
            filtered=args.gate_filtered,
            role=args.gate_role,
            tolerance=args.tolerance,
        )
    )


def _print_retrain(result: dict) -> None:
    verdict = "promoted to production" if result["promoted"] else "rejected (kept as candidate)"
    print(
        f"retrain of {result['index']!r} from v{result['base']}: wrote versions "
        f"{', '.join(map(str, result['versions']))} on dataset {result['dataset']!r}"
    )
    print(f"v{result['candidate']} {verdict}: {result['reason']}")


# ------------------------------------------------------------------------------ schedule
def cmd_schedule(args) -> int:
    cron = None
    if args.cron is not None:
        from grove.flows.schedule import check_cron

        cron = check_cron(args.cron)  # refuse a bad line before anything starts
        if is_local(args):
            raise GroveError(
                "--local cannot schedule: a cron schedule needs a Prefect server "
                "(use --once --local to run now without Prefect)"
            )
    if args.rounds < 0:
        raise GroveError(f"--rounds must be >= 0, got {args.rounds}")
    if args.data is not None and not os.path.isfile(args.data):
        raise InputError(f"{args.data}: no such file")
    if len(set(args.index)) != len(args.index):
        raise GroveError(f"an index is named twice: {' '.join(args.index)}")
    runner = runner_spec(args)
    gate = gate_settings(args)
    store = open_store(args)
    for index in args.index:
        base = store.resolve(index)  # production, else the newest (NotFoundError: unknown index)
        if args.method is not None and args.method != base.method:
            raise GroveError(f"index {index!r} holds {base.method} versions; --method {args.method} does not match")
    data = os.path.abspath(args.data) if args.data else None
    params = {"rounds": args.rounds, "method": args.method, "data": data, "gate": gate, "max_users": args.users}
    if cron is not None:
        return _serve_schedule(store.url, args, cron, params, runner)
    if is_local(args):
        return _retrain_local(store.url, args, data, gate)
    from grove.flows.schedule import retrain_deployment

    flow, flow_params = retrain_deployment(store.url, _indexes(args), params, runner)
    result = flow(**flow_params)
    for one in result if isinstance(result, list) else [result]:
        _print_retrain(one)
    return 0


def _indexes(args) -> str | list[str]:
    """One index as a name (the single-index `retrain` flow), several as a list."""
    return args.index[0] if len(args.index) == 1 else list(args.index)


def _retrain_local(url: str, args, data: str | None, gate: dict) -> int:
    """Each index in turn, in-process; every one runs, then the first failure is raised."""
    from dataclasses import asdict

    from grove.flows.retrain import retrain_local

    errors = []
    for index in args.index:
        try:
            _print_retrain(asdict(retrain_local(url, index, args.rounds, args.method, data, gate, args.users)))
        except GroveError as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
    return 0


def _serve_schedule(url: str, args, cron: str, params: dict, runner) -> int:
    from grove.flows.schedule import deployment_name, prefect_api_url, serve_retrain

    api = prefect_api_url()  # GroveError when no server answers
    indexes = _indexes(args)
    name = args.name or deployment_name(indexes)
    what = f"index {indexes!r}" if isinstance(indexes, str) else f"indexes {', '.join(indexes)}"
    on = f" on a {runner.describe()} task runner" if runner is not None else ""
    print(
        f"serving deployment '{'retrain' if isinstance(indexes, str) else 'retrain-indexes'}/{name}' of {what}"
        f"{on} on cron {cron!r} against {api} (Ctrl-C stops it)",
        flush=True,
    )
    serve_retrain(url, indexes, cron, params, name=name, runner=runner)
    return 0


# ------------------------------------------------------------------------------ promote
def cmd_promote(args) -> int:
    from grove.flows.gate import GateConfig, GateDecision, run_gate

    gate = gate_settings(args)
    store = open_store(args)
    store.resolve(args.index, version=args.version)  # unknown index / foreign version first
    if is_local(args):
        from grove.flows.ops import local_ops
        from grove.flows.retrain import retrain_target

        cfg = GateConfig.from_dict(gate)
        base = store.resolve(args.index, version=args.version)
        ops = local_ops(retrain_target(store.url, args.index, base, None, cfg, args.users))
        decision = run_gate(store, args.index, args.version, cfg, evaluate=ops.evaluate, publish=False)
    else:
        from grove.flows.prefect_flows import promote_flow

        decision = GateDecision.from_dict(promote_flow(store.url, args.index, args.version, gate, args.users))
    cfg = decision.config
    if decision.promoted:
        print(f"v{decision.candidate} promoted: {cfg.alias} {decision.current} -> {decision.candidate}")
    else:
        print(
            f"v{decision.candidate} rejected: {cfg.alias} stays {decision.current}, "
            f"{cfg.candidate_alias} -> {decision.candidate}"
        )
    print(f"  {decision.reason}")
    return 0 if decision.promoted else 1


# ------------------------------------------------------------------------------ serve
def cmd_serve(args) -> int:
    from grove.flows.service import ServiceConfig, serve

    config = ServiceConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_request=args.max_request,
        max_cost=args.max_cost,
        slice_cost=args.slice_cost,
        max_body_bytes=args.max_body_bytes,
        poll_seconds=args.poll_seconds,
        precision=args.precision,
        compile=args.compile,
    )
    if args.threads < 0:
        raise GroveError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(
        args.store,
        args.index,
        alias=args.alias,
        host=args.host,
        port=args.port,
        device=args.device,
        config=config,
        access_log=args.access_log,
    )
    return 0


# ------------------------------------------------------------------------------ report
def cmd_report(args) -> int:
    from grove.flows.report import write_report

    path = write_report(open_store(args), args.index, args.out, args.format, args.k, args.role)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ register
def register(sub) -> None:
    """Add the operating commands to the ``grove`` subparsers."""
    p = sub.add_parser("schedule", help="retrain indexes on a cron schedule (Prefect) or once now")
    p.add_argument("index", nargs="+", metavar="INDEX", help="one index, or several retrained in one flow run")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='5-field cron line, e.g. "0 3 * * *" (needs PREFECT_API_URL)')
    when.add_argument("--once", action="store_true", help="run the retrain flow now")
    p.add_argument("--method", default=None, help="must match the index's method (a safety check)")
    p.add_argument("--rounds", type=int, default=1, help="relearn+train rounds after the first train")
    p.add_argument("--data", default=None, help="interactions file; retrains from scratch when it changed")
    p.add_argument("--name", default=None, help="deployment name (default retrain-INDEX, retrain-A+B)")
    _gate_opts(p)
    p.add_argument("--local", action="store_true", help="with --once: run without Prefect")
    add_runner_opts(p)
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("promote", help="run the promotion gate for one version (exit 1: rejected)")
    p.add_argument("index", help="the index")
    p.add_argument("version", type=int, help="the candidate version")
    _gate_opts(p)
    p.add_argument("--local", action="store_true", help="run without Prefect (no artifact)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("serve", help="HTTP retrieval service following an alias")
    p.add_argument("index", help="the index to serve")
    p.add_argument("--alias", default="production", help="the alias followed: a move is served within a poll")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_precision_opts(p)
    p.add_argument("--max-batch", type=int, default=256, help="histories per micro-batch")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a micro-batch waits for more")
    p.add_argument("--max-request", type=int, default=1024, help="histories per request (more: 413)")
    p.add_argument(
        "--max-cost",
        type=int,
        default=1024 * 4096 * 1000,
        help="largest request cost, histories x beam x k (more: 413)",
    )
    p.add_argument(
        "--slice-cost",
        type=int,
        default=1 << 22,
        help="cost of a slice: larger requests are served in slices interleaved with others",
    )
    p.add_argument("--max-body-bytes", type=int, default=4 << 20, help="largest request body (more: 413)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="alias poll period")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default; 1 is often fastest on a small shared machine)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="HTML or Markdown report: lineage, metrics, curve, aliases")
    p.add_argument("index", help="the index")
    p.add_argument("--out", default=None, help="page path (default grove-report-INDEX.FORMAT)")
    p.add_argument("--format", choices=("html", "md"), default=None, help="default: from --out, else html")
    p.add_argument("--k", type=one_int, default=None, help="recall@k of the curve (default 10)")
    p.add_argument("--role", default=None, help="held-out role of the curve (default valid)")
    p.set_defaults(func=cmd_report)
