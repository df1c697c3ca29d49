"""Flask-WTF forms: every form carries a CSRF token."""
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional


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


class EmptyForm(FlaskForm):
    """For buttons that change something (delete, revoke): only the CSRF token."""
