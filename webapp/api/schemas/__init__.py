"""Marshmallow schemas for every body, query and response of the v1 API, one module per resource
(`common` holds the error document, the strict base and paging). Import from the resource's module;
each class name less `Schema` is its component name in the OpenAPI document."""
