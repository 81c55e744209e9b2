"""add a trigram index for the project search on PostgreSQL

The search box matches every word with LIKE '%word%' on project.search_text. On PostgreSQL
a GIN index of trigrams (pg_trgm) serves it; SQLite has no such index and gets none.

Revision ID: 4c1e9a7d2b60
Revises: 083752de259b
Create Date: 2026-12-05 10:30:00

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '4c1e9a7d2b60'
down_revision = '083752de259b'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    op.create_index(
        'ix_project_search_text_trgm', 'project', ['search_text'], unique=False,
        postgresql_using='gin', postgresql_ops={'search_text': 'gin_trgm_ops'},
    )


def downgrade():
    if op.get_bind().dialect.name != 'postgresql':
        return
    # The extension stays: other objects of the database may use it.
    op.drop_index('ix_project_search_text_trgm', table_name='project')
