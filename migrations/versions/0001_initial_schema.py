"""Create the initial schema and the default roles.

Revision ID: 0001_initial
Revises:
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('source_address', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target_type', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_events_at'), ['at'], unique=False)

    op.create_table('dicom_identities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('ae_title_folded', sa.String(length=16), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('allow_anonymous_tls', sa.Boolean(), nullable=False),
    sa.Column('require_tls', sa.Boolean(), nullable=False),
    sa.Column('permitted', sa.JSON(), nullable=False),
    sa.Column('allowed_networks', sa.JSON(), nullable=False),
    sa.Column('retrieve_host', sa.String(length=255), nullable=True),
    sa.Column('retrieve_port', sa.Integer(), nullable=True),
    sa.Column('client_certificate_pem', sa.Text(), nullable=True),
    sa.Column('client_certificate_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('client_certificate_subject', sa.String(length=512), nullable=True),
    sa.Column('client_certificate_not_after', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_peer_address', sa.String(length=64), nullable=True),
    sa.Column('last_transport', sa.String(length=16), nullable=True),
    sa.Column('associations_accepted', sa.Integer(), nullable=False),
    sa.Column('associations_rejected', sa.Integer(), nullable=False),
    sa.Column('instances_received', sa.Integer(), nullable=False),
    sa.Column('bytes_received', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_identities')),
    sa.UniqueConstraint('ae_title', name=op.f('uq_dicom_identities_ae_title')),
    sa.UniqueConstraint('ae_title_folded', name=op.f('uq_dicom_identities_ae_title_folded')),
    sa.UniqueConstraint('client_certificate_fingerprint', name=op.f('uq_dicom_identities_client_certificate_fingerprint')),
    sa.UniqueConstraint('name', name=op.f('uq_dicom_identities_name'))
    )
    op.create_table('roles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('permissions', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_roles')),
    sa.UniqueConstraint('name', name=op.f('uq_roles_name'))
    )
    op.create_table('associations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('identity_id', sa.Integer(), nullable=True),
    sa.Column('calling_ae_title', sa.String(length=64), nullable=True),
    sa.Column('called_ae_title', sa.String(length=64), nullable=True),
    sa.Column('peer_address', sa.String(length=64), nullable=False),
    sa.Column('peer_port', sa.Integer(), nullable=True),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('local_port', sa.Integer(), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('tls_version', sa.String(length=16), nullable=True),
    sa.Column('tls_cipher', sa.String(length=64), nullable=True),
    sa.Column('client_certificate_subject', sa.String(length=512), nullable=True),
    sa.Column('client_certificate_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('operations', sa.JSON(), nullable=False),
    sa.Column('instances_received', sa.Integer(), nullable=False),
    sa.Column('bytes_received', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['identity_id'], ['dicom_identities.id'], name=op.f('fk_associations_identity_id_dicom_identities'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_associations'))
    )
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.create_index('ix_associations_identity_started', ['identity_id', 'started_at'], unique=False)
        batch_op.create_index('ix_associations_identity_id', ['identity_id', 'id'], unique=False)
        batch_op.create_index('ix_associations_started', ['started_at'], unique=False)
        batch_op.create_index('ix_associations_reason_started', ['reason', 'started_at'], unique=False)

    op.create_table('usage_days',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('identity_id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('associations_accepted', sa.Integer(), nullable=False),
    sa.Column('associations_rejected', sa.Integer(), nullable=False),
    sa.Column('echo_requests', sa.Integer(), nullable=False),
    sa.Column('store_requests', sa.Integer(), nullable=False),
    sa.Column('find_requests', sa.Integer(), nullable=False),
    sa.Column('move_requests', sa.Integer(), nullable=False),
    sa.Column('get_requests', sa.Integer(), nullable=False),
    sa.Column('commit_requests', sa.Integer(), nullable=False),
    sa.Column('instances_received', sa.Integer(), nullable=False),
    sa.Column('bytes_received', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['identity_id'], ['dicom_identities.id'], name=op.f('fk_usage_days_identity_id_dicom_identities'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_days')),
    sa.UniqueConstraint('identity_id', 'day', name=op.f('uq_usage_days_identity_id'))
    )
    op.create_table('listener_heartbeats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('node', sa.String(length=255), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('port', sa.Integer(), nullable=False),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('version', sa.String(length=32), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_listener_heartbeats')),
    sa.UniqueConstraint('node', 'transport', 'port', name=op.f('uq_listener_heartbeats_node'))
    )
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('identity_id', sa.Integer(), nullable=True),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_time', sa.String(length=16), nullable=True),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('study_description', sa.String(length=128), nullable=True),
    sa.Column('modalities', sa.String(length=64), nullable=True),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['identity_id'], ['dicom_identities.id'], name=op.f('fk_studies_identity_id_dicom_identities'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_studies_study_instance_uid'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_identity_id'), ['identity_id'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role_id', sa.Integer(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('session_token', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], name=op.f('fk_users_role_id_roles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name=op.f('uq_users_username'))
    )
    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('identity_id', sa.Integer(), nullable=True),
    sa.Column('association_id', sa.Integer(), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.String(length=255), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['association_id'], ['associations.id'], name=op.f('fk_instances_association_id_associations')),
    sa.ForeignKeyConstraint(['identity_id'], ['dicom_identities.id'], name=op.f('fk_instances_identity_id_dicom_identities'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_instances_study_id_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instances')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_instances_sop_instance_uid'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_identity_id'), ['identity_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_series_instance_uid'), ['series_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_study_id'), ['study_id'], unique=False)

    roles = sa.table('roles', sa.column('name', sa.String), sa.column('permissions', sa.JSON))
    op.bulk_insert(roles, [
        {'name': 'Administrator',
         'permissions': ['integrations.manage', 'usage.view', 'users.manage', 'audit.view']},
        {'name': 'Support', 'permissions': ['usage.view']},
        {'name': 'Clinician', 'permissions': []},
    ])


def downgrade():
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_study_id'))
        batch_op.drop_index(batch_op.f('ix_instances_series_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instances_identity_id'))

    op.drop_table('instances')
    op.drop_table('users')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_identity_id'))

    op.drop_table('studies')
    op.drop_table('listener_heartbeats')
    op.drop_table('usage_days')
    with op.batch_alter_table('associations', schema=None) as batch_op:
        batch_op.drop_index('ix_associations_reason_started')
        batch_op.drop_index('ix_associations_started')
        batch_op.drop_index('ix_associations_identity_id')
        batch_op.drop_index('ix_associations_identity_started')

    op.drop_table('associations')
    op.drop_table('roles')
    op.drop_table('dicom_identities')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_events_at'))

    op.drop_table('audit_events')
