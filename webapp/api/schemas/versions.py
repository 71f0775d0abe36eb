"""Index versions and rollback."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from webapp.api.schemas.common import StrictSchema


class VersionSchema(Schema):
    version = fields.Integer()
    vectors = fields.Integer(allow_none=True)
    documents = fields.Integer(allow_none=True)
    model = fields.String(allow_none=True)
    kind = fields.String(allow_none=True)
    built_at = fields.Float(allow_none=True)
    published_at = fields.Float(allow_none=True)
    current = fields.Boolean()
    on_disk = fields.Boolean()
    served_by = fields.Integer()


class VersionListSchema(Schema):
    versions = fields.List(fields.Nested(VersionSchema))


class RollbackSchema(StrictSchema):
    version = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
