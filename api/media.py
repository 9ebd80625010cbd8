"""Signed media URLs for the local object store.

With S3 the store hands out presigned URLs and this blueprint is unused. With the
local directory the api serves the objects itself, but only for a valid, unexpired
signature, and with HTTP Range support so a browser's audio element can seek.
"""

from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, abort, request, send_file

from api.services import services
from soundkit.storage import LocalStore, check_key, verify_media_signature

bp = Blueprint("media", __name__)

CONTENT_TYPES = {".m4a": "audio/mp4", ".json": "application/json"}


@bp.get("/media/<path:key>")
def serve(key: str) -> Response:
    svc = services()
    store = svc.store
    if not isinstance(store, LocalStore):
        abort(404)
    try:
        check_key(key)
    except ValueError:
        abort(404)
    if not verify_media_signature(svc.settings.secret_key, key,
                                  request.args.get("expires", ""), request.args.get("sig", "")):
        abort(403)
    path = store.path(key)
    if not path.is_file():
        abort(404)
    suffix = path.suffix.lower()
    mimetype = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0]
    response = send_file(path, mimetype=mimetype or "application/octet-stream",
                         conditional=True, max_age=0)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
