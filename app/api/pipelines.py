"""A project's pipeline: immutable versions, their differences, YAML export and import.
Whoever may view the project sees its versions; admins (manage) save and import them."""
from flask import Response, request
from flask_login import current_user

from app import access
from app.api.core import dump, operation, paginate
from app.api.schemas import Page, Pagination
from app.api.schemas.pipelines import (
    DiffQuery,
    ExportQuery,
    PipelineDiff,
    PipelineEditorData,
    PipelineSave,
    PipelineVersionDetail,
    PipelineVersionOut,
)
from app.models import PipelineVersion, Plugin, Project, Service
from app.services import pipeline_diff, pipeline_editor, pipeline_yaml, pipelines
from app.services.errors import NotFound, ServiceError

TAG = "pipelines"
BASE = "/projects/<int:project_id>/pipeline"
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml",
                        "text/plain", "application/json"})  # JSON is YAML too


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported"


def _actor():
    return current_user._get_current_object()


def _project(project_id, action="view"):
    project = access.get_visible(current_user, Project, project_id, "project")
    access.require(current_user, action, project)
    return project


@operation("GET", BASE + "/versions", summary="The project's pipeline versions, newest first",
           tag=TAG, query=Pagination, response=Page[PipelineVersionOut])
def list_pipeline_versions(project_id, params):
    project = _project(project_id)
    stmt = pipelines.versions(project, access.visible(current_user, PipelineVersion))
    return paginate(stmt, params, PipelineVersionOut)


@operation("POST", BASE + "/versions",
           summary="Save the pipeline as a new version (admins); every problem is named", tag=TAG,
           body=PipelineSave, response=PipelineVersionDetail, status=201)
def save_pipeline_version(project_id, data):
    project = _project(project_id, "manage")
    version = pipelines.save_version(_actor(), project, data.definition, data.comment)
    return dump(PipelineVersionDetail, version)


@operation("GET", BASE + "/versions/<int:number>",
           summary="One pipeline version: definition, resolved steps, who saved it and when",
           tag=TAG, response=PipelineVersionDetail)
def get_pipeline_version(project_id, number):
    return dump(PipelineVersionDetail, pipelines.get_version(_project(project_id), number))


@operation("GET", BASE + "/versions/<int:number>/diff",
           summary="What changed from another version (default: the previous one)", tag=TAG,
           query=DiffQuery, response=PipelineDiff)
def diff_pipeline_versions(project_id, number, params):
    project = _project(project_id)
    version = pipelines.get_version(project, number)
    against = params.against if params.against is not None else number - 1
    previous = pipelines.get_version(project, against) if against >= 1 else None
    return pipeline_diff.diff(version, previous)


@operation("GET", BASE + "/editor",
           summary="What the visual editor draws from: the catalog's services and plugins (with "
                   "params schemas), the project's secret names (admins) and whether you may save",
           tag=TAG, response=PipelineEditorData)
def pipeline_editor_data(project_id):
    project = _project(project_id)
    return pipeline_editor.editor_data(
        project, access.visible(current_user, Service), access.visible(current_user, Plugin),
        access.can(current_user, "manage", project))


@operation("GET", BASE + "/export", summary="A version as YAML (application/yaml; default: the latest)",
           tag=TAG, query=ExportQuery)
def export_pipeline(project_id, params):
    project = _project(project_id)
    if params.version is not None:
        version = pipelines.get_version(project, params.version)
    else:
        version = pipelines.latest_version(project)
        if version is None:
            raise NotFound(f"project {project.name} has no pipeline version yet: save one first")
    response = Response(pipeline_yaml.export_yaml(version), content_type="application/yaml; charset=utf-8")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{project.name}-pipeline-v{version.number}.yaml"')
    return response


@operation("POST", BASE + "/import",
           summary="Save a new version from YAML (Content-Type application/yaml; admins); "
                   "a top-level comment: becomes the version's comment",
           tag=TAG, response=PipelineVersionDetail, status=201)
def import_pipeline(project_id):
    project = _project(project_id, "manage")
    if request.mimetype not in YAML_TYPES:
        raise UnsupportedMediaType(
            f"send the pipeline as YAML with Content-Type: application/yaml, not "
            f"{request.mimetype or 'no content type'}", {"body": "use Content-Type: application/yaml"})
    if (request.content_length or 0) > pipelines.MAX_BYTES:
        raise pipelines.TooLarge(f"the YAML is larger than {pipelines.MAX_BYTES // 1024} KiB",
                                 {"body": "send a smaller file"})
    data = request.stream.read(pipelines.MAX_BYTES + 1)
    version = pipeline_yaml.import_yaml(_actor(), project, data)
    return dump(PipelineVersionDetail, version)
