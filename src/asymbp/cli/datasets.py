"""`asymbp datasets`: every dataset, its protocol and whether it is here; `download KEY`."""

from __future__ import annotations

HELP = "list the datasets (protocol, network, status here) or download one"


def add_parser(sub) -> None:
    p = sub.add_parser("datasets", help=HELP, description=HELP + ".")
    p.add_argument("--data-dir", metavar="DIR",
                   help="data root (default: $ASYMBP_DATA, else ~/.cache/asymbp)")
    p.set_defaults(func=run_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    d = actions.add_parser("download", help="download and verify a dataset's official files",
                           description="Download KEY's official files into <data root>/KEY/, "
                                       "resuming partial downloads, verified against pinned "
                                       "checksums. Base URL: --mirror or $ASYMBP_MIRROR.")
    d.add_argument("key", metavar="KEY", help="dataset key (see 'asymbp datasets')")
    d.add_argument("--data-dir", metavar="DIR", dest="download_data_dir",
                   help="data root (default: $ASYMBP_DATA, else ~/.cache/asymbp)")
    d.add_argument("--mirror", metavar="URL",
                   help="fetch <URL>/<KEY>/<file> instead of the official URLs")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=run_download)


def run_list(args) -> int:
    from ..data import DATASETS, data_root
    from ..data.download import SOURCES, status

    root = data_root(args.data_dir)
    rows = [("key", "paper name", "classes", "train", "test", "network", "status", "files go in")]
    problems = []
    for key, info in DATASETS.items():
        state, why = status(key, args.data_dir)
        if state == "corrupt":
            problems.append(f"{key}: {why}")
        if info.packaged:
            where = "(installs with the package)"
        else:
            how = "" if key in SOURCES else " [manual]"
            where = f"{key}/: {info.files}{how}"
        rows.append((key, info.name, str(info.classes or "-"), info.train, info.test, info.model,
                     state, where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    print()
    for line in problems:
        print(f"corrupt {line}")
    print(f"data root: {root}  (--data-dir or $ASYMBP_DATA); "
          "'asymbp datasets download KEY' fetches the non-[manual] ones")
    return 0


def run_download(args) -> int:
    from ..data.download import download

    data_dir = args.download_data_dir or args.data_dir
    paths = download(args.key, data_dir, mirror=args.mirror, progress=not args.no_progress)
    print(f"{args.key}: {len(paths)} file(s) ready in {paths[0].parent}")
    return 0
