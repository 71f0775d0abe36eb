"""Snapshots: the listing, a restore's source, and disaster recovery's job."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.names import SNAPSHOT_ID_PATTERN, openapi_pattern
from webapp.api.schemas.common import StrictSchema, collection_name

SNAPSHOT_ID_DOC = openapi_pattern(SNAPSHOT_ID_PATTERN)


def snapshot_id(**kw) -> fields.String:
    # marshmallow formats the error message: the pattern's braces are doubled to stay literal.
    shown = SNAPSHOT_ID_DOC.replace("{", "{{").replace("}", "}}")
    return fields.String(validate=validate.Regexp(SNAPSHOT_ID_PATTERN, error=f"must match {shown}"),
                         metadata={**kw.pop("metadata", {}), "pattern": SNAPSHOT_ID_DOC}, **kw)


class SnapshotSchema(Schema):
    id = fields.String(required=True, metadata={"description": "when it was taken (UTC) and 8 hex digits"})
    version = fields.Integer(required=True, metadata={"description": "the index version it holds"})
    bytes = fields.Integer(required=True, metadata={"description": "size of the archive"})
    sha256 = fields.String(required=True, metadata={"description": "sha256 of the whole archive (also the "
                                                                   "X-Swapline-SHA256 header of its download)"})
    created_at = fields.String(required=True)


class SnapshotListSchema(Schema):
    snapshots = fields.List(fields.Nested(SnapshotSchema), required=True, metadata={"description": "oldest first"})


class FromSnapshotSchema(StrictSchema):
    collection = collection_name(required=True, metadata={"description": "the collection the snapshot was taken of"})
    id = snapshot_id(required=True)
