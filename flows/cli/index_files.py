"""``grove export INDEX[@V] DIR`` and ``grove import-index DIR``: an index version to a folder of
Parquet + TorchScript files and back (`grove.flows.index_export`)."""

from __future__ import annotations

from grove.flows.cli.common import open_store


def cmd_export(args) -> int:
    from grove.flows.index_export import export_index, parse_ref

    index, version = parse_ref(args.ref)
    out = export_index(open_store(args), index, args.dir, version=version, alias=args.alias)
    scorer = f"; TorchScript: {out.scripted}" if out.scripted else "; no TorchScript model for this method"
    print(f"exported version {out.version} of index {index!r} to {out.folder}: {len(out.files)} files{scorer}")
    return 0


def cmd_import(args) -> int:
    from grove.flows.index_export import import_index

    vid = import_index(open_store(args), args.dir, index=args.index)
    print(f"wrote version {vid} (imported from {args.dir})")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write an index version to a folder: Parquet structure with raw item ids, the model as "
        "TorchScript where the method has one, weights, manifest with SHA-256",
    )
    p.add_argument("ref", metavar="INDEX[@V]", help="the index, at version V (default: production, else the newest)")
    p.add_argument("dir", help="the folder to create (must not exist)")
    p.add_argument("--alias", default=None, help="export the version this alias points at")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-index", help="read a folder written by grove export back as a new version")
    p.add_argument("dir", help="the exported folder")
    p.add_argument("--index", default=None, help="index to add the version to (default: the exported index's name)")
    p.set_defaults(func=cmd_import)
