"""Rows of the authorization matrix (tests/test_access_matrix.py), one module per API area.

Each module defines `ROWS` ({(method, rule): (path template, JSON body, statuses per role)})
and `make_ids(ex, ids)`, which creates the objects its rows need (ex: the spec_example
fixture, ids: what the matrix made so far) and returns {name: id} for the path templates.
"""
from tests.access import deployments, pipelines, provisioning, services

AREAS = (services, pipelines, deployments, provisioning)
