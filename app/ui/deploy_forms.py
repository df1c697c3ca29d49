"""Forms of the deployment pages. Tags are not WTForms fields: the steps differ per pipeline
version, so the pages read them as `tag-<step id>` from the submitted form."""
from flask import request
from flask_wtf import FlaskForm
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired, Length

TAG_FIELD_PREFIX = "tag-"


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class DeploymentForm(FlaskForm):
    # Choices are the projects and environments the user may deploy to (set by the page).
    project_id = SelectField("Project", coerce=_int_or_none, validate_choice=False)
    environment_id = SelectField("Environment", coerce=_int_or_none, validate_choice=False)
    name = StringField("Deployment name", validators=[DataRequired(), Length(max=63)])


class CloneForm(FlaskForm):
    name = StringField("Name of the clone", validators=[DataRequired(), Length(max=63)])


def submitted_tags():
    """{step id: tag} from the form's `tag-<step id>` fields; empty ones are left out so the
    service names the missing step."""
    return {key[len(TAG_FIELD_PREFIX):]: value.strip() for key, value in request.form.items()
            if key.startswith(TAG_FIELD_PREFIX) and value.strip()}
