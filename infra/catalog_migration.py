"""The file catalog of earlier releases (``collections.json`` on the search service's disk), imported into
the catalog database once."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from infra.catalog import Catalog
from infra.catalog_db import CollectionRow

log = logging.getLogger(__name__)


def migrate_json(catalog: Catalog, folder: Path) -> int:
    """Import ``collections.json`` of an earlier release (the catalog was a file on the search
    service's disk) once; the file is renamed so it is never read again. Returns collections imported."""
    path = folder / "collections.json"
    if not path.is_file():
        return 0
    data: dict[str, dict[str, Any]] = json.loads(path.read_text())
    imported = 0
    with catalog.db.transaction() as conn:
        for name, meta in sorted(data.items()):
            if catalog.db.get(name) is not None:
                continue
            versions: dict[str, str] = {k: str(v) for k, v in meta.get("versions", {}).items()}
            live = catalog.index.resolve(name)
            if live is None or live not in versions:
                log.warning("collections.json: %r has no live collection in the index; not imported", name)
                continue
            build = meta.get("build") or {}
            row = CollectionRow(
                name,
                str(meta["model"]),
                int(meta["dim"]),
                list(meta.get("keyword_fields", [])),
                live,
                versions[live],
                build_physical=build.get("physical"),
                build_version=build.get("version"),
                build_started_at=time.time() if build else None,
                created_at=time.time(),
            )
            catalog.db.insert(conn, row)
            for physical, version in versions.items():
                if physical != live:
                    catalog.db.add_physical(conn, physical, name, version)
            for physical, since in meta.get("retired", {}).items():
                catalog.db.retire(conn, physical, float(since))
            imported += 1
    path.rename(path.with_name("collections.json.migrated"))
    log.warning("migrated %d collection(s) from %s into the catalog database", imported, path)
    return imported
