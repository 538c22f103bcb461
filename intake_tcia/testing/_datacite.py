"""A minimal DataCite REST API (``GET dois/{doi}``, ``GET dois``) for the sample collections."""

from __future__ import annotations

from typing import Any

from .builder import CollectionInfo

NOT_FOUND = {"errors": [{"status": "404",
                         "title": "The resource you are looking for doesn't exist."}]}


def doi_record(info: CollectionInfo) -> dict[str, Any]:
    """The JSON:API ``data`` object DataCite gives for a collection's DOI."""
    creators = [
        {"name": f"{family}, {given}" if given else family,
         "nameType": "Personal" if given else "Organizational",
         **({"givenName": given, "familyName": family} if given else {})}
        for family, given in info.creators
    ]
    return {
        "id": info.doi.lower(),
        "type": "dois",
        "attributes": {
            "doi": info.doi.lower(),
            "identifiers": [],
            "creators": creators,
            "titles": [{"title": info.title}],
            "publisher": "The Cancer Imaging Archive",
            "publicationYear": info.year,
            "types": {"resourceTypeGeneral": "Dataset", "resourceType": "DICOM"},
            "descriptions": [{"description": info.description, "descriptionType": "Abstract"}],
            "rightsList": [{"rights": info.license_name, "rightsUri": info.license_uri}],
            "url": f"https://www.cancerimagingarchive.net/collection/{info.name.lower()}/",
            "version": "1",
            "relatedIdentifiers": [],
            "created": f"{info.year}-01-01T00:00:00.000Z",
            "updated": f"{info.year}-01-01T00:00:00.000Z",
            "citationCount": 0,
        },
    }


def lookup(collections: dict[str, CollectionInfo], path: str) -> tuple[int, dict[str, Any]]:
    """Answer ``dois/{doi}`` or ``dois`` (path relative to the DataCite base URL)."""
    if path.strip("/") == "dois":
        data = [doi_record(c) for c in collections.values()]
        return 200, {"data": data, "meta": {"total": len(data)}, "links": {}}
    prefix = "dois/"
    if path.startswith(prefix):
        wanted = path[len(prefix):].lower()
        for info in collections.values():
            if info.doi.lower() == wanted:
                return 200, {"data": doi_record(info)}
    return 404, NOT_FOUND
