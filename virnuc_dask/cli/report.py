"""``virnuc-dask report OUTDIR``: HTML report and PNG figures of a finished run."""

from __future__ import annotations

import argparse

from virnuc_dask.cli.options import add_logging


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        help="HTML report and PNG figures of a finished run",
        description="Read the results in OUTDIR (run_summary.json, read_predictions.tsv, "
        "prediction_results.txt) and write a single-file HTML report that opens offline: "
        "read calls, score distributions, and read tracks (each ORF's score along its read, "
        "coloured by call) for the top reads or the reads given with --ids. Prints the run "
        "summary.",
    )
    parser.add_argument(
        "outdir",
        metavar="OUTDIR",
        help="the --out directory of a predict "
        "run, of a predict --samplesheet run (a page per sample and an overview with "
        "each sample's viral fraction), or of an evaluate run (metrics, ROC curves, score "
        "histograms)",
    )
    parser.add_argument(
        "--html", metavar="FILE", help="where to write the report (default: OUTDIR/report.html)"
    )
    parser.add_argument(
        "--png",
        metavar="DIR",
        help="also write the figures as PNG files "
        "into DIR (read_calls.png, score_distribution.png, read_tracks.png)",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="draw tracks of N reads (default 10): reads called virus first, "
        "then those with the most chunks with an ORF, then the highest virus "
        "score",
    )
    parser.add_argument(
        "--ids",
        nargs="+",
        action="extend",
        default=[],
        metavar="ID",
        help="draw tracks of these reads instead of the top N",
    )
    parser.add_argument(
        "--length",
        type=int,
        metavar="BP",
        help="chunk length of the run (default: from run_summary.json)",
    )
    add_logging(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from virnuc_dask.dataflow.summary_text import summary_text
    from virnuc_dask.errors import ReportError
    from virnuc_dask.report.run_report import write_report

    if args.top < 0:
        raise ReportError(f"--top must be >= 0, got {args.top}")
    from virnuc_dask.report.evaluation_report import is_evaluation, write_evaluation_report
    from virnuc_dask.report.sequencing_report import is_sequencing_run, write_run_report

    if is_sequencing_run(args.outdir):
        written = write_run_report(args.outdir, top=args.top)
        for path in written["pages"]:
            print(f"sample report: {path}")
        print(f"report: {written['html']}")
        return 0
    if is_evaluation(args.outdir):
        written = write_evaluation_report(args.outdir, html_path=args.html, png_dir=args.png)
        for path in (written["html"], *written["pngs"]):
            print(f"report: {path}")
        return 0
    written = write_report(
        args.outdir,
        html_path=args.html,
        png_dir=args.png,
        top=args.top,
        ids=args.ids,
        length=args.length,
    )
    data = written["data"]
    if data.summary:
        print(summary_text(data.summary))
    print(f"report: {written['html']}")
    for path in written["pngs"]:
        print(f"figure: {path}")
    return 0
