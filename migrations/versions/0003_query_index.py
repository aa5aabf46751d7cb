"""Add the patient, study, series and instance attributes that C-FIND matches on.

Instances stored before this revision keep empty values in the new columns.

Revision ID: 0003_query_index
Revises: 0002_api_tokens
Create Date: 2026-12-17
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0003_query_index"
down_revision = "0002_api_tokens"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dicom_study_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("patient_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("patient_name", sa.String(length=324), nullable=True))
        batch_op.add_column(sa.Column("patient_birth_date", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("patient_sex", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_studies_patient_id"), ["patient_id"], unique=False)

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("series_number", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("series_description", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("instance_number", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("instance_number")
        batch_op.drop_column("series_description")
        batch_op.drop_column("series_number")

    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_studies_patient_id"))
        batch_op.drop_column("patient_sex")
        batch_op.drop_column("patient_birth_date")
        batch_op.drop_column("patient_name")
        batch_op.drop_column("patient_id")
        batch_op.drop_column("dicom_study_id")
