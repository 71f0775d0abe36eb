"""The quality gate (canaries), evaluation runs and the last evaluation a collection shows."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from shared.limits import MAX_CANARIES, MAX_EVAL_QUERIES, MAX_EXPECT, MAX_EXPECT_CHARS
from shared.search.engine import MODES
from webapp.api.schemas.common import StrictSchema

QUERY_DOC = "at most SWAPLINE_MAX_QUERY_CHARS characters (default 2000), else 422"
EXPECT_DOC = ("a document id (a hit matches when its doc_id equals it), or a path prefix ending in `/` (a hit "
              "matches when its doc_id starts with it)")


def _expect(**kw) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=MAX_EXPECT_CHARS), metadata={"description": EXPECT_DOC},
                         **kw)


class CanarySchema(StrictSchema):
    query = fields.String(required=True, validate=validate.Length(min=1), metadata={"description": QUERY_DOC})
    expect = _expect(required=True)
    k = fields.Integer(load_default=5, strict=True, validate=validate.Range(min=1), metadata={
        "description": "the canary hits when `expect` is among its top k; at most SWAPLINE_MAX_K"})
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODES), metadata={
        "description": "search mode (default: the collection's default_mode)"})


class CanariesSchema(StrictSchema):
    canaries = fields.List(fields.Nested(CanarySchema), required=True,
                           validate=validate.Length(min=1, max=MAX_CANARIES), metadata={
                               "description": f"1 to {MAX_CANARIES} canary queries"})
    max_drop = fields.Integer(load_default=0, strict=True, validate=validate.Range(min=0, max=MAX_CANARIES), metadata={
        "description": "a rebuild is refused when its version misses more canaries than the published one "
                       "plus this"})


class CanariesViewSchema(Schema):
    canaries = fields.List(fields.Nested(CanarySchema), required=True)
    max_drop = fields.Integer(required=True)
    updated_at = fields.String(allow_none=True)


class EvalQuerySchema(StrictSchema):
    query = fields.String(required=True, validate=validate.Length(min=1), metadata={"description": QUERY_DOC})
    expect = fields.List(_expect(), required=True, validate=validate.Length(min=1, max=MAX_EXPECT), metadata={
        "description": f"the relevant documents: 1 to {MAX_EXPECT} document ids or path prefixes"})


class EvalRequestSchema(StrictSchema):
    queries = fields.List(fields.Nested(EvalQuerySchema), required=True,
                          validate=validate.Length(min=1, max=MAX_EVAL_QUERIES), metadata={
                              "description": f"1 to {MAX_EVAL_QUERIES} labelled queries"})
    k = fields.Integer(load_default=10, strict=True, validate=validate.Range(min=1), metadata={
        "description": "the k of hits@k; at most SWAPLINE_MAX_K (MRR and nDCG@10 look at max(k, 10) hits)"})


class CanaryOutcomeSchema(Schema):
    query = fields.String()
    expect = fields.String()
    k = fields.Integer()
    mode = fields.String()
    hit = fields.Boolean(metadata={"description": "expect was among the top k on the evaluated version"})
    rank = fields.Integer(allow_none=True)
    baseline_hit = fields.Boolean(allow_none=True, metadata={
        "description": "the same on the version published then (null: none to compare with)"})


class QualityReportSchema(Schema):
    version = fields.Integer(metadata={"description": "the version the rebuild built and evaluated"})
    job_id = fields.String()
    at = fields.String(allow_none=True)
    passed = fields.Boolean(metadata={"description": "neither the canaries nor the shrink guard refused it"})
    published = fields.Boolean(metadata={"description": "passed, or forced"})
    refused = fields.List(fields.String(), metadata={"description": "quality_gate and/or shrink_guard"})
    forced = fields.Boolean()
    misses = fields.Integer()
    baseline_version = fields.Integer(allow_none=True)
    baseline_misses = fields.Integer(allow_none=True)
    baseline_note = fields.String(allow_none=True, metadata={
        "description": "why the canaries were not compared with a published version"})
    max_drop = fields.Integer()
    documents = fields.Integer()
    baseline_documents = fields.Integer()
    canaries = fields.List(fields.Nested(CanaryOutcomeSchema))
