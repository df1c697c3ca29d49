"""Forms of the project pages and the reading of their fields into what app/services/catalog.py
and app/services/teams.py take. Like the catalog forms, fields carry no WTForms validators: the
services check every value and name the bad field; what cannot even be read is passed on as
text so the service refuses it with the allowed range."""
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice

from app.models.catalog import DEFAULT_PROJECT_CPUS, DEFAULT_PROJECT_MEMORY_MB
from app.services.errors import ValidationFailed
from app.ui.catalog_forms import _int_or_none, _number, _text

DESCRIPTION_MAX = 500  # the column's length
LEVEL_CHOICES = [SelectChoice("read_only", "Read-Only"), SelectChoice("full", "Full Access")]


class ProjectForm(FlaskForm):
    name = StringField("Name")
    description = StringField("Description")
    cpus = StringField("CPUs per deployment", default=f"{DEFAULT_PROJECT_CPUS:g}")
    memory_mb = StringField("Memory per deployment (MB)", default=str(DEFAULT_PROJECT_MEMORY_MB))
    # Empty: the environment's auto-cleanup applies.
    cleanup_minutes = StringField("Auto-cleanup override (minutes)")


class SecretForm(FlaskForm):
    name = StringField("Secret name")
    # Write-only: a PasswordField never renders its value back into the page.
    value = PasswordField("Value")


class SecretReplaceForm(FlaskForm):
    value = PasswordField("New value")


class ProjectGrantForm(FlaskForm):
    # Choices are the teams without a grant on the project (set by the page).
    team_id = SelectField("Team", coerce=_int_or_none, validate_choice=False)
    level = SelectField("Access", choices=LEVEL_CHOICES, validate_choice=False)


class GrantLevelForm(FlaskForm):
    level = SelectField("Access", choices=LEVEL_CHOICES, validate_choice=False)


def project_values(form):
    """Every field of the project as catalog.create/update take them."""
    description = _text(form.description)
    if len(description) > DESCRIPTION_MAX:
        raise ValidationFailed(f"description is too long: use at most {DESCRIPTION_MAX} characters",
                               {"description": f"use at most {DESCRIPTION_MAX} characters"})
    cleanup = _text(form.cleanup_minutes)
    return {
        "name": _text(form.name), "description": description,
        "cpus": _number(_text(form.cpus), float),
        "memory_mb": _number(_text(form.memory_mb), int),
        "cleanup_minutes": _number(cleanup, int) if cleanup else None,
    }


def project_data(project):
    return {
        "name": project.name, "description": project.description, "cpus": f"{project.cpus:g}",
        "memory_mb": str(project.memory_mb),
        "cleanup_minutes": "" if project.cleanup_minutes is None else str(project.cleanup_minutes),
    }
