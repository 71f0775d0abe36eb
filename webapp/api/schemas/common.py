"""What every resource's schemas share: the strict base, the error document, the collection name
field and paging."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from shared.names import COLLECTION_NAME_PATTERN, COLLECTION_NAME_RULE, openapi_pattern

# The pattern the OpenAPI document shows; `collection_name` checks the stricter \Z form itself.
COLLECTION_NAME_DOC = openapi_pattern(COLLECTION_NAME_PATTERN)


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE  # unknown body fields are a 422, not silently dropped


class ErrorSchema(Schema):
    """An RFC 9457 problem document (application/problem+json) with Swapline's members."""

    class Meta:
        ordered = True

    type = fields.String(required=True, metadata={
        "description": "the problem type, `urn:swapline:problem:` followed by `code`"})
    title = fields.String(required=True, metadata={"description": "the HTTP status phrase"})
    status = fields.Integer(required=True, metadata={"description": "the HTTP status code"})
    detail = fields.String(required=True, metadata={"description": "what went wrong, for a person"})
    code = fields.String(required=True, metadata={"description": "machine-readable error code"})
    message = fields.String(required=True, metadata={"description": "the same text as `detail`"})
    errors = fields.Dict(metadata={"description": "per-field validation messages"})
    job_id = fields.String(metadata={"description": "the job in the way (409 on rebuild, drop or reconcile)"})
    source_id = fields.String(metadata={"description": "the source in the way (409 source_conflict)"})
    queue = fields.String(metadata={"description": "the full queue (503 queue_full)"})
    kept_versions = fields.List(fields.Integer(), metadata={
        "description": "the versions a read may ask for, newest publish first (404 version_not_kept, 410 "
                       "cursor_version_gone)"})


def collection_name(**kw) -> fields.String:
    """A collection name field, validated with the one pattern in `shared.names`."""
    # marshmallow formats the error message: the pattern's braces are doubled to stay literal.
    shown = COLLECTION_NAME_DOC.replace("{", "{{").replace("}", "}}")
    return fields.String(validate=validate.Regexp(
        COLLECTION_NAME_PATTERN, error=f"must match {shown}: {COLLECTION_NAME_RULE}"),
        metadata={**kw.pop("metadata", {}), "pattern": COLLECTION_NAME_DOC}, **kw)


# Versions are fences: positive, and far below this (a bound, so no huge integer reaches a lookup).
MAX_VERSION = 2**53


def version_field(strict: bool = False) -> fields.Integer:
    """The index version a read asks for (optional): any kept version, else the served one. `strict` in a
    JSON body (an integer, not "3"); a query argument is always a string."""
    return fields.Integer(strict=strict, validate=validate.Range(min=1, max=MAX_VERSION), metadata={
        "description": "read this kept index version (one of GET .../versions) instead of the one served; "
                       "404 version_not_kept, listing the kept versions, when it is not kept"})


def next_cursor_field() -> fields.String:
    return fields.String(required=True, allow_none=True, metadata={
        "description": "pass as `cursor` for the next page; null on the last page"})


class PageQuerySchema(StrictSchema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(min=1, max=1400),
                           metadata={"description": "next_cursor of the previous page"})
