"""Flask-WTF forms: every form carries a CSRF token."""
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    FloatField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
    TextAreaField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from app.models.catalog import DEFAULT_CLEANUP_MINUTES, DEFAULT_CPU_OVERCOMMIT
from app.models.identity import SCOPE_ADMIN, SCOPE_DEPLOY, SCOPE_READ_ONLY


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=256)])


class UserForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    full_name = StringField("Full name", validators=[Optional(), Length(max=120)])
    password = PasswordField("Initial password", validators=[DataRequired(), Length(max=256)])
    role = SelectField("Role", choices=[SelectChoice("user", "User"), SelectChoice("admin", "Admin")])


class UserStatusForm(FlaskForm):
    is_active = BooleanField("Active")
    role = SelectField("Role", choices=[SelectChoice("user", "User"), SelectChoice("admin", "Admin")])


class TeamForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=64)])
    description = StringField("Description", validators=[Optional(), Length(max=500)])


class MemberForm(FlaskForm):
    user_id = SelectField("User", coerce=int)


class GrantForm(FlaskForm):
    target = SelectField("Project or environment")
    level = SelectField(
        "Access", choices=[SelectChoice("read_only", "Read-Only"), SelectChoice("full", "Full Access")]
    )


class TokenForm(FlaskForm):
    name = StringField("Token name", validators=[DataRequired(), Length(max=64)])
    # Checked by the service (a missing one is read-only), which names the field when it refuses.
    scope = SelectField("Scope", default=SCOPE_READ_ONLY, validate_choice=False, choices=[
        SelectChoice(SCOPE_READ_ONLY, "Read-only"), SelectChoice(SCOPE_DEPLOY, "Deploy"),
        SelectChoice(SCOPE_ADMIN, "Admin")])
    expires_in_days = IntegerField("Expires after (days; empty: never)",
                                   validators=[Optional(), NumberRange(min=1, max=3650)])


class EnvironmentSettingsForm(FlaskForm):
    description = StringField("Description", validators=[Optional(), Length(max=500)])
    base_domain = StringField("Base domain", default="localhost",
                              validators=[DataRequired(), Length(max=200)])
    cleanup_minutes = IntegerField("Auto-cleanup after (minutes of inactivity)",
                                   default=DEFAULT_CLEANUP_MINUTES, validators=[InputRequired()])
    cpu_overcommit = FloatField("CPU overcommit ratio (CPU limits may add up to a node's CPUs times this)",
                                default=DEFAULT_CPU_OVERCOMMIT, validators=[Optional()])  # empty: kept


class EnvironmentForm(EnvironmentSettingsForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=63)])


class NodeForm(FlaskForm):
    name = StringField("Node name", validators=[DataRequired(), Length(max=63)])
    host = StringField("Host name or IP address", validators=[DataRequired(), Length(max=255)])
    port = IntegerField("Agent port", default=5000, validators=[InputRequired()])


class SshNodeForm(FlaskForm):
    """Add a node the controller sets up over SSH (issue 16)."""

    name = StringField("Node name", validators=[DataRequired(), Length(max=63)])
    host = StringField("Host name or IP address", validators=[DataRequired(), Length(max=255)])
    port = IntegerField("Agent port", default=5000, validators=[InputRequired()])
    ssh_host = StringField("SSH host (empty: the same)", validators=[Optional(), Length(max=255)])
    ssh_port = IntegerField("SSH port", default=22, validators=[InputRequired()])
    ssh_user = StringField("SSH user", validators=[DataRequired(), Length(max=64)])
    private_key = TextAreaField("Private key", validators=[Optional(), Length(max=16384)])
    password = PasswordField("Password", validators=[Optional(), Length(max=16384)])
    become = BooleanField("Use sudo", default=True)


class NodeSettingsForm(FlaskForm):
    host = StringField("Host name or IP address", validators=[DataRequired(), Length(max=255)])
    port = IntegerField("Agent port", validators=[InputRequired()])
    # Empty: use what the agent reports.
    cpus_override = FloatField("CPUs override", validators=[Optional()])
    memory_mb_override = IntegerField("Memory override (MB)", validators=[Optional()])
    # Empty: the environment's ratio.
    cpu_overcommit = FloatField("CPU overcommit ratio", validators=[Optional()])
    memory_reserve_mb = IntegerField("Memory reserve for the host (MB)", validators=[InputRequired()])


class ThumbprintForm(FlaskForm):
    thumbprint = StringField("Thumbprint from the agent's log", validators=[DataRequired(), Length(max=95)])


class EmptyForm(FlaskForm):
    """For buttons that change something (delete, revoke): only the CSRF token."""
