"""``intake-tcia demo``: a tour of the package against the built-in sample archive, offline.

The tour starts :class:`~intake_tcia.testing.ArchiveServer` in this process (no network), then
shows each layer in turn: the collections, a series query as a DataFrame, the lazy catalog down
to one series, that series as a volume, and a PNG of its middle slice. On the sample archive it
then fetches the same series the Imaging Data Commons way (the sample IDC bucket and index,
``backend="idc"``) and checks that both backends gave the same voxels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import import_optional

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .client import TCIAClient

__all__ = ["run_demo", "save_slice_png", "DEMO_COLLECTION"]

#: The sample archive's collection with a CT volume.
DEMO_COLLECTION = "Pydicom-CT-Series"
#: The tour takes the smallest CT series with at least this many slices (else the largest).
MIN_SLICES = 10


def run_demo(
    *,
    output: str | Path = "intake-tcia-demo.png",
    api_url: str | None = None,
    nlst_api_url: str | None = None,
    cache_dir: str | Path | None = None,
    collection: str | None = None,
    echo: Callable[[str], Any] = print,
) -> Path:
    """Run the tour and save a PNG of the middle slice of a CT series.

    Parameters
    ----------
    output : str or Path
        The PNG to write.
    api_url, nlst_api_url : str, optional
        Tour this archive instead of starting the built-in sample archive.
    cache_dir : str or Path, optional
        The series cache; default a temporary folder, removed afterwards.
    collection : str, optional
        The collection to take a CT series from; needed with ``api_url``, default
        :data:`DEMO_COLLECTION` on the sample archive.
    echo : callable
        Called with each line of the tour.

    Returns
    -------
    pathlib.Path
        The PNG written (absolute).

    Raises
    ------
    ValueError
        If ``api_url`` is given without ``collection``, or the collection has no CT series.
    intake_tcia.errors.MissingDependencyError
        If Pillow (the ``demo`` extra) is not installed.
    """
    from .client import TCIAClient

    if api_url is not None and collection is None:
        raise ValueError("touring another archive (api_url) needs a collection")
    import_optional("PIL.Image", "demo", "the demo's PNG")  # fail before any work
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        server = None
        if api_url is None:
            from .testing import ArchiveServer

            server = stack.enter_context(ArchiveServer())
            api_url, nlst_api_url = server.api_url, server.nlst_api_url
            echo(f"The sample archive is serving at {api_url} (in this process, no network).")
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="intake-tcia-"))
            echo(f"Series are cached in {cache_dir} (temporary).")
        client = stack.enter_context(
            TCIAClient(api_url=api_url, nlst_api_url=nlst_api_url, cache_dir=cache_dir,
                       backend="nbia" if server is not None else None)
        )
        _section(echo, "1. Collections", "client.collections()")
        echo(client.collections().to_string(index=False))

        collection = collection or DEMO_COLLECTION
        row = _pick_series(client, collection, echo)
        source = _catalog_source(client, row, echo)
        volume = _volume(source, echo)
        middle = volume.shape[0] // 2
        path = save_slice_png(volume.array[middle], output)
        _section(echo, "5. A picture", f"the middle slice, k = {middle} "
                 f"({volume.positions[middle]:.1f} mm along the slice normal)")
        echo(f"Saved {path}")
        if server is not None:
            _from_idc(stack, server, row, volume, echo)
    echo(f"\nTour done in {time.perf_counter() - started:.1f} s.")
    return path


def _section(echo: Callable[[str], Any], title: str, code: str) -> None:
    echo(f"\n{title}    >>> {code}")


def _pick_series(client: TCIAClient, collection: str, echo: Callable[[str], Any]) -> pd.Series:
    """Query the CT series of ``collection`` and pick one (see :data:`MIN_SLICES`)."""
    _section(echo, "2. A series query", f"client.series(collection={collection!r}, modality='CT')")
    series = client.series(collection=collection, modality="CT")
    if series.empty:
        raise ValueError(f"collection {collection!r} has no CT series")
    columns = ["PatientID", "SeriesDescription", "ImageCount", "FileSize", "SeriesInstanceUID"]
    echo(series[columns].to_string(index=False))
    big_enough = series[series["ImageCount"] >= MIN_SLICES].sort_values("ImageCount")
    chosen = big_enough.iloc[0] if len(big_enough) else series.sort_values("ImageCount").iloc[-1]
    echo(f"-> series {chosen['SeriesInstanceUID']} ({chosen['ImageCount']} images)")
    return chosen


def _catalog_source(client: TCIAClient, row: pd.Series, echo: Callable[[str], Any]) -> Any:
    """Walk the lazy catalog down to the series in ``row``; nothing is downloaded."""
    from .sources import TCIACatalog

    _section(echo, "3. The lazy catalog",
             "cat = intake.open_tcia_cat(...); cat[collection][patient][study][series]")
    node = TCIACatalog(**_client_options(client))
    levels = {"Collection": "collections", "PatientID": "patients",
              "StudyInstanceUID": "studies", "SeriesInstanceUID": "series"}
    for depth, (column, level) in enumerate(levels.items()):
        echo(f"{'  ' * depth}{row[column]}  (one of {len(list(node))} {level})")
        node = node[row[column]]
    node.discover()
    echo(f"discover(): shape {node.shape}, dtype {node.dtype}  (metadata only, no pixels yet)")
    return node


def _volume(source: Any, echo: Callable[[str], Any]) -> Any:
    """Fetch the series (once, into the cache) and stack it into a volume."""
    from .volume import volume_from_datasets

    _section(echo, "4. A volume", "volume_from_datasets(source.read())")
    volume = volume_from_datasets(source.read())
    spacing = ", ".join(f"{s:g}" for s in volume.spacing)
    echo(f"shape (z, y, x) {volume.shape}, spacing ({spacing}) mm, values "
         f"{volume.array.min()} .. {volume.array.max()} ({volume.dtype})")
    return volume


def _from_idc(stack: contextlib.ExitStack, server: Any, row: pd.Series, volume: Any,
              echo: Callable[[str], Any]) -> None:
    """The same series from the sample archive's IDC bucket and index (``backend="idc"``)."""
    import numpy as np

    from .client import TCIAClient
    from .testing import IDCBucketServer, write_idc_index
    from .volume import volume_from_datasets

    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="intake-tcia-idc-")))
    bucket = stack.enter_context(IDCBucketServer(server.archive))
    index = write_idc_index(folder / "idc-index", server.archive)
    echo(f"\nThe sample archive's IDC bucket is serving at {bucket.url}{bucket.bucket}, its index "
         f"is {index}.")
    uid = row["SeriesInstanceUID"]
    _section(echo, "6. The same series from IDC",
             f"TCIAClient(backend='idc', idc_url=..., idc_index=...).read_series({uid!r})")
    client = stack.enter_context(TCIAClient(backend="idc", idc_url=bucket.url, idc_index=index,
                                            cache_dir=folder / "cache"))
    started = time.perf_counter()
    again = volume_from_datasets(client.read_series(uid))
    echo(f"{bucket.count('ListObjectsV2')} listing, {bucket.count('GetObject')} GETs of "
         f"{row['ImageCount']} objects in {time.perf_counter() - started:.2f} s, every MD5 = "
         "its ETag")
    same = again.shape == volume.shape and np.array_equal(again.array, volume.array)
    echo(f"same voxels as from NBIA: {same}")
    if not same:
        raise AssertionError(f"series {uid}: IDC and NBIA gave different voxels")
    _pinned(client, folder, uid, echo)
    query = ("SELECT collection_id, Modality, COUNT(*) AS series FROM index "
             "GROUP BY ALL ORDER BY ALL")
    _section(echo, "8. IDC in its own terms: SQL over its index", f"client.sql({query!r})")
    if importlib.util.find_spec("duckdb") is None:
        echo("(needs DuckDB: pip install 'intake-tcia[idc]')")
    else:
        echo(client.sql(query).to_string(index=False))


def _pinned(client: Any, folder: Path, uid: str, echo: Callable[[str], Any]) -> None:
    """Lock the series to its bytes, and replay the lockfile on a fresh cache."""
    from .lockfile import check_folder

    lock = folder / "cohort.lock"
    _section(echo, "7. A pinned cohort", f"client.lock([{uid!r}], 'cohort.lock'); "
             "TCIAClient(...).download('cohort.lock', 'replayed/')")
    locked = client.lock([uid], lock)
    series = locked.series[0]
    echo(f"{lock.name}: {len(series.instances)} instances pinned by MD5, source {series.source}, "
         f"IDC release {series.idc_version}, DOI {series.doi}")
    reviewer = type(client)(settings=client.settings.replace(cache_dir=folder / "reviewer"))
    with reviewer:
        table = reviewer.download(lock, folder / "replayed", progress=False)
    checked = check_folder(lock, folder / "replayed")
    echo(f"replayed from {', '.join(sorted(set(table['source'])))}: "
         f"{int((checked['status'] == 'ok').sum())} of {len(checked)} instances as locked")


def _client_options(client: TCIAClient) -> dict[str, Any]:
    settings = client.settings
    return {"api_url": settings.api_url, "nlst_api_url": settings.nlst_api_url,
            "cache_dir": str(settings.cache_dir)}


def save_slice_png(image: np.ndarray, path: str | Path) -> Path:
    """Save a 2D array as an 8-bit greyscale PNG, its values stretched to the full range.

    Parameters
    ----------
    image : numpy.ndarray
        Rows by columns.
    path : str or Path
        The file to write; its folder is created if needed.

    Returns
    -------
    pathlib.Path
        The file written (absolute).
    """
    import numpy as np

    pil_image = import_optional("PIL.Image", "demo", "the demo's PNG")
    values = np.asarray(image, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    path = Path(path).expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    pil_image.fromarray(scaled.round().astype(np.uint8)).save(path, format="PNG")
    return path
