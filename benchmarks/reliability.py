"""The reliability tables of the README: faults injected, operations run, data lost, corrupt
files; then the attacks by class (NBIA and IDC), tried and held.

Runs the scenarios of the reliability suite (``tests/reliability``) at full size against the
sample archive on loopback, checks every file left in caches and download folders against the
archive's own files (MD5, and parsed by pydicom), and prints one Markdown row per scenario. Then
it runs the attack tests (:data:`ATTACKS`: each plays one attack with a hostile loopback server,
file or file system) in a pytest of their own and prints, per class, how many were tried and
held (a skipped test, e.g. a mount where mounting is not allowed, is not counted as tried).
Last, the command that produced the tables:

    python benchmarks/reliability.py [--series 200] [--rate 0.2] [--seed 2] [--readers 50]
                                     [--attacks-only]

"Data lost" counts series (or readers) that ended neither complete and verified nor reported
failed, after the rerun where there is one; "corrupt files" counts files that differ from the
archive, cannot be parsed, belong to no complete series, or were written where a hostile answer
pointed.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from reliability.harness import (  # noqa: E402
    OPERATIONS,
    WAYS_IN,
    Audit,
    archive_md5s,
    ask_via,
    audit_cache,
    build_archive,
    client_options,
    fetch_via,
    get_image_counts,
    run_kill_and_resume,
    run_readers,
    run_storm,
    tree,
)

from intake_tcia.errors import TCIAError, UnsafeArchiveError  # noqa: E402
from intake_tcia.testing import ArchiveServer  # noqa: E402
from intake_tcia.testing.faults import HOSTILE_KINDS  # noqa: E402

RETRIES = 3
COLUMNS = ("scenario", "faults injected", "operations run", "data lost", "corrupt files")
CT = "Pydicom-CT-Series"
HOSTILE_ANSWERS = {"html": {}, "invalid_json": {}, "endless": {"seconds": 4},
                   "hang": {"seconds": 4}}


def _bad(audits: Iterable[Audit]) -> int:
    """Files that must not be there: corrupt, in an incomplete series folder, or stray."""
    return sum(len(a.corrupt) + len(a.incomplete) + len(a.stray) for a in audits)


def storm(server: ArchiveServer, uids: list[str], work: Path, rate: float, seed: int) -> dict:
    run = run_storm(server, uids, work, rate=rate, retries=RETRIES, seed=seed)
    failed = int((run.tables[0]["status"] == "failed").sum())
    most = max(run.requests[0].values())
    share = run.plan.injected / sum(run.requests[0].values())
    return {
        "scenario": f"{len(uids)} series downloaded while {share:.0%} of getImage requests "
                    "fail (429/503 with Retry-After, resets, truncated zips, wrong MD5s), then "
                    f"again: {failed} reported failed, then fetched; at most {most} getImage "
                    f"a series (1 + {RETRIES} retries)",
        "faults injected": run.plan.injected + run.query_faults,
        "operations run": run.operations,
        "data lost": len(run.lost(uids, 0) | run.lost(uids, 1)),
        "corrupt files": _bad([*run.caches, *run.dests]),
    }


def kill(server: ArchiveServer, uids: list[str], work: Path) -> dict:
    run = run_kill_and_resume(server, uids, work, kill_after=0.5, latency=0.01)
    refetched = sum(run.requests.values())
    missing = len(uids) - len(run.cached_at_kill)
    extra = refetched - missing + sum(run.requests[u] for u in run.cached_at_kill)
    return {
        "scenario": f"download of {len(uids)} series killed (SIGKILL) with "
                    f"{len(run.cached_at_kill)} in the cache, then run again: {refetched} "
                    f"getImage for the {missing} missing, {extra} more",
        "faults injected": 1,
        "operations run": run.operations,
        "data lost": len(set(uids) - run.dest.complete),
        "corrupt files": _bad([run.cache_at_kill, run.cache, run.dest]),
    }


def hostile_zips(server: ArchiveServer, uid: str, work: Path) -> dict:
    faults = operations = lost = bad = refused = 0
    for kind in HOSTILE_KINDS:
        for way in WAYS_IN:
            home = work / f"{kind}-{way}"
            home.mkdir(parents=True)
            options = client_options(server, home / "cache")
            server.reset()
            server.faults.add(kind, endpoint="getImage", series=uid, times=5)
            faults += 1
            before = tree(home)
            try:
                fetch_via(way, server, options, uid, home / "dest")
            except TCIAError as exc:
                refused += isinstance(exc, UnsafeArchiveError) or "UnsafeArchiveError" in str(exc)
            bad += sum(1 for e in tree(home) - before
                       if e.startswith(("f ", "l ")) and not e.endswith(".lock"))
            operations += server.count()
            server.reset()
            fetch_via(way, server, options, uid, home / "dest")  # the real series, now
            operations += server.count()
            audit = audit_cache(home / "cache", server.archive)
            lost += uid not in audit.complete
            bad += _bad([audit])
    return {
        "scenario": f"hostile zips ({', '.join(HOSTILE_KINDS)}) through "
                    f"{', '.join(WAYS_IN)}: {refused} of {faults} refused, nothing written "
                    "outside the cache; then the real series",
        "faults injected": faults,
        "operations run": operations,
        "data lost": lost,
        "corrupt files": bad,
    }


def hostile_answers(server: ArchiveServer, uid: str, work: Path) -> dict:
    faults = operations = unclear = bad = 0
    slowest = 0.0
    for answer, params in HOSTILE_ANSWERS.items():
        for operation, endpoint in OPERATIONS.items():
            cache = work / f"{answer}-{operation}"
            options = client_options(server, cache, retries=1, timeout=(2.0, 0.5),
                                     query_timeout=1.0)
            server.reset()
            server.faults.add(answer, endpoint=endpoint, times=10, **params)
            faults += 1
            start = time.monotonic()
            try:
                ask_via(operation, options, uid, work / "dest")
                unclear += 1
            except TCIAError:
                pass
            slowest = max(slowest, time.monotonic() - start)
            operations += server.count()
            bad += sum(1 for e in tree(cache) if e.startswith(("f ", "l "))
                       and not e.endswith(".lock")) if cache.exists() else 0
    return {
        "scenario": f"server answers HTML, invalid JSON, an endless body or nothing to "
                    f"{len(OPERATIONS)} operations (queries, download, tcia://, source): "
                    f"{faults - unclear} of {faults} clear errors, the slowest after "
                    f"{slowest:.1f} s",
        "faults injected": faults,
        "operations run": operations,
        "data lost": unclear,
        "corrupt files": bad,
    }


def readers(server: ArchiveServer, uid: str, work: Path, count: int, processes: int) -> dict:
    expected = sorted(archive_md5s(server.archive, uid).items())
    results = run_readers(server, work / "cache", uid, readers=count, processes=processes)
    requests = get_image_counts(server)[uid]
    where = f"{processes} processes" if processes else "threads"
    return {
        "scenario": f"{count} concurrent readers ({where}; tcia:// and the series source) of "
                    f"one uncached series: {requests} download",
        "faults injected": 0,
        "operations run": len(results),
        "data lost": sum(1 for r in results if r != expected),
        "corrupt files": _bad([audit_cache(work / "cache", server.archive)]),
    }


#: The attack tests of issue #13 by class: ``{class: (what they play, pytest node ids)}``.
ATTACKS: dict[str, tuple[str, list[str]]] = {
    "credentials": (
        "secrets sent towards another origin (redirects, token URLs, the NLST host), echoed "
        "back by a server, with line breaks, in reprs, logs, pickles and saved catalogs",
        [f"tests/test_http.py::{t}" for t in (
            "test_a_token_login_redirected_elsewhere_posts_no_password_there",
            "test_the_legacy_api_key_does_not_follow_a_redirect_to_another_origin",
            "test_a_token_endpoint_redirect_is_not_followed",
            "test_a_private_api_login_is_never_sent_to_the_nlst_host",
            "test_a_malformed_token_answer_is_an_auth_error",
            "test_secret_settings_with_line_breaks_are_refused_without_showing_them",
            "test_the_session_auth_repr_shows_no_login")]
        + ["tests/test_auth.py::test_secrets_never_shown_logged_or_pickled",
           "tests/test_auth.py::test_credentials_go_only_to_the_api_hosts",
           "tests/test_reliability_secrets.py",
           "tests/test_sources.py::test_catalog_secrets_stay_out_of_saved_and_described_entries",
           "tests/test_sources.py::test_secrets_given_as_keywords_are_not_pickled_or_written_to_yaml",
           "tests/test_fs.py::test_secrets_given_as_keywords_are_not_pickled_or_serialised"],
    ),
    "unbounded answers": (
        "endless, trickled and cut answers, trickled headers, redirect loops, slow zips, "
        "nesting and bodies that cost quadratic time, errors that cannot mend themselves",
        [f"tests/test_http.py::{t}" for t in (
            "test_an_endless_answer_is_cut_at_max_answer_bytes",
            "test_a_trickled_body_with_a_content_length_meets_query_timeout",
            "test_trickled_headers_meet_the_read_timeout",
            "test_an_answer_cut_inside_its_headers_is_retried",
            "test_a_redirect_loop_is_bounded",
            "test_leading_whitespace_is_parsed_in_linear_time",
            "test_4xx_answers_are_not_retried_but_408_is",
            "test_an_unknown_host_fails_at_once",
            "test_a_base_url_without_scheme_or_host_is_refused_when_the_client_is_made",
            "test_nonsense_numbers_are_refused_when_the_client_is_made")]
        + [f"tests/reliability/test_hostile_nbia.py::{t}" for t in (
            "test_an_answer_cut_after_a_header_line_is_retried_not_read_as_empty",
            "test_a_redirect_chain_makes_at_most_two_plus_retries_requests",
            "test_an_endless_csv_answer_is_cut_near_what_was_asked")]
        + ["tests/test_download.py::test_a_slow_zip_meets_series_timeout",
           "tests/test_reliability_bodies.py",
           "tests/reliability/test_hostile.py::test_a_hostile_server_gives_a_clear_error_within_the_timeout"],
    ),
    "cache changed from outside, hostile zips": (
        "files edited in dest or in the cache, zips with short, extra, non-DICOM, "
        "over-long, escaping or linked members, bombs",
        [f"tests/test_download.py::{t}" for t in (
            "test_editing_a_downloaded_file_never_changes_a_verified_series",
            "test_a_cached_file_changed_in_place_is_noticed_and_fetched_again",
            "test_a_zip_without_md5s_or_with_missing_files_is_refused",
            "test_md5hashes_listing_the_license_is_accepted",
            "test_a_non_dicom_member_with_a_matching_md5_is_refused",
            "test_more_files_than_promised_are_refused",
            "test_a_member_shorter_than_it_declares_is_refused",
            "test_a_member_name_too_long_for_a_file_is_refused",
            "test_unsafe_archives_are_refused_without_retry")]
        + ["tests/test_cli.py::test_verify_rehashes_the_cache_and_removes_a_damaged_series",
           "tests/reliability/test_hostile.py::test_hostile_zips_are_refused_and_nothing_is_written",
           "tests/reliability/test_hostile.py::test_a_full_size_zip_bomb_is_refused",
           "tests/reliability/test_hostile.py::test_a_zip_far_beyond_its_series_size_is_refused",
           "tests/reliability/test_hostile_nbia.py::"
           "test_a_zip_member_with_a_wrong_crc_is_refused_though_its_md5_matches"],
    ),
    "hostile IDC listings": (
        "a ListObjectsV2 that never ends, one page of 3 million keys, entity declarations, "
        "keys with a line break, 503 SlowDown",
        [f"tests/reliability/test_hostile_idc.py::{t}" for t in (
            "test_a_listing_that_never_ends_is_cut_after_the_series_count",
            "test_one_listing_page_of_millions_of_keys_is_parsed_as_it_streams",
            "test_a_listing_declaring_entities_is_refused",
            "test_a_key_holding_a_line_break_is_refused",
            "test_slow_down_on_the_listing_names_the_series")],
    ),
    "hostile IDC objects": (
        "bodies that never end, headers that never end, objects cut at their source (size and "
        "ETag agreeing), a gzip bomb, 32 MB of noise, DICOM stubs, one instance under two "
        "keys, an instance of another study, a bucket trickling 20 B/s, 503 SlowDown",
        [f"tests/reliability/test_hostile_idc.py::{t}" for t in (
            "test_an_object_whose_body_never_ends_is_refused_before_it_is_fetched",
            "test_header_reads_are_capped",
            "test_an_object_truncated_at_its_source_is_not_published",
            "test_a_gzip_bomb_listed_at_its_inflated_size_is_stopped_by_its_ratio",
            "test_a_large_non_dicom_object_is_refused_at_once",
            "test_a_dicom_stub_is_not_an_instance",
            "test_one_instance_under_two_keys_is_refused",
            "test_an_instance_of_another_study_is_refused",
            "test_a_trickling_bucket_meets_the_series_deadline",
            "test_slow_down_names_the_series_and_the_object")],
    ),
    "hostile IDC indices": (
        "instanceCount null or 0, a series 2,000x its series_size_MB, NaN/inf/null/negative "
        "sizes, text and fractional counts, a broken idc_index.parquet, an unlisted series",
        [f"tests/reliability/test_hostile_idc.py::{t}" for t in (
            "test_a_count_the_index_cannot_vouch_for_is_not_complete",
            "test_a_series_far_larger_than_its_index_size_is_refused",
            "test_hostile_index_values_give_an_error_naming_file_and_column",
            "test_a_broken_index_file_gives_an_error_naming_it",
            "test_a_series_the_index_does_not_list_is_said_so")],
    ),
    "hostile names and layouts": (
        "folder layouts two series share, names leading out of dest (metadata, symlinks, "
        "manifests, tcia:// listings), Windows device names, manifests that cost quadratic time",
        [f"tests/test_download.py::{t}" for t in (
            "test_layouts_that_let_two_series_share_a_folder_are_refused",
            "test_a_user_symlink_under_dest_fails_only_the_series_below_it",
            "test_windows_reserved_names_are_never_folder_names",
            "test_a_dest_the_file_system_refuses_is_a_storage_error_naming_series_and_path",
            "test_layout_fields_cannot_escape_dest")]
        + [f"tests/test_manifest.py::{t}" for t in (
            "test_a_hostile_databasket_id_cannot_name_a_file_outside_the_folder",
            "test_many_continuation_lines_are_read_in_linear_time",
            "test_a_malformed_unicode_escape_error_is_short")]
        + ["tests/test_http.py::test_tcia_fs_lists_no_instance_path_it_could_not_open",
           "tests/reliability/test_hostile.py::test_metadata_cannot_lead_a_download_out_of_dest",
           "tests/reliability/test_hostile.py::test_filesystem_get_of_hostile_names_stays_in_its_folder",
           "tests/reliability/test_hostile.py::test_query_values_are_encoded_as_sent"],
    ),
    "hostile file systems": (
        "a read-only cache, a cache on another file system than dest or than its staging "
        "folder, a full dest, a full cache (real tmpfs and read-only bind mounts)",
        ["tests/test_reliability_storage.py"],
    ),
}
ATTACK_COLUMNS = ("attack class", "attacks tried", "held", "what is played")


def attacks(work: Path) -> list[dict]:
    """Run the attack tests of :data:`ATTACKS` in one pytest; one row per class."""
    report = work / "attacks.xml"
    ids = [node for _, nodes in ATTACKS.values() for node in nodes]
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
         f"--junitxml={report}", *ids],
        cwd=ROOT, stdout=subprocess.DEVNULL, check=False,
    )
    cases = ET.parse(report).getroot().iter("testcase")
    outcomes = {}  # "file::test[param]" -> held (True), not held (False), skipped (None)
    for case in cases:
        path = case.get("classname", "").replace(".", "/") + ".py"
        kinds = {child.tag for child in case}
        held = None if "skipped" in kinds else not kinds & {"failure", "error"}
        outcomes[f"{path}::{case.get('name')}"] = held
    rows = []
    for name, (played, nodes) in ATTACKS.items():
        mine = [held for case, held in outcomes.items()
                if any(case == node or case.startswith((node + "::", node + "["))
                       for node in nodes)]
        tried = [held for held in mine if held is not None]
        rows.append({"attack class": name, "attacks tried": len(tried),
                     "held": sum(tried), "what is played": played})
    return rows


def markdown(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:,}" if isinstance(row[c], int) else row[c]
                                       for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--attacks-only", action="store_true",
                        help="print only the table of attacks")
    args = parser.parse_args(argv)
    logging.getLogger("intake_tcia").setLevel(logging.ERROR)  # retries are expected here
    ok = True
    with tempfile.TemporaryDirectory(prefix="intake-tcia-reliability-") as tmp:
        work = Path(tmp)
        if not args.attacks_only:
            rows = scenarios(work, args)
            totals = {c: sum(r[c] for r in rows) for c in COLUMNS[1:]}
            rows.append({"scenario": "**total**", **totals})
            print(markdown(rows) + "\n")
            ok = totals["data lost"] == 0 and totals["corrupt files"] == 0
        rows = attacks(work)
    tried, held = (sum(r[c] for r in rows) for c in ("attacks tried", "held"))
    rows.append({"attack class": "**total**", "attacks tried": tried, "held": held,
                 "what is played": ""})
    print(markdown(rows, ATTACK_COLUMNS))
    command = "python benchmarks/reliability.py " + (
        "--attacks-only" if args.attacks_only else " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "attacks_only"))
    print(f"\nProduced by `{command}`.")
    return 0 if ok and tried == held else 1


def scenarios(work: Path, args: argparse.Namespace) -> list[dict]:
    """The rows of the first table: fault storms, kills, hostile zips and answers, readers."""
    archive, uids = build_archive(work / "archive", args.series)
    load_uid = archive.add_synthetic_series("Reliability", "LOAD", 8, 256, 256, seed=10_000)
    ct_uid = archive.series.query("Collection == @CT and Modality == 'CT'")[
        "SeriesInstanceUID"].iloc[0]
    with ArchiveServer(archive) as server:
        return [
            storm(server, uids, work / "storm", args.rate, args.seed),
            kill(server, uids, work / "kill"),
            hostile_zips(server, ct_uid, work / "zips"),
            hostile_answers(server, ct_uid, work / "answers"),
            readers(server, load_uid, work / "threads", args.readers, 0),
            readers(server, load_uid, work / "processes", args.readers, args.readers),
        ]


if __name__ == "__main__":
    sys.exit(main())
