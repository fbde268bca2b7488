-- The Grace store as release 0.1.0 created it with metadata.create_all (before migrations).

-- Dialect: postgresql. Used by tests/test_migrations.py to prove an old store upgrades.

CREATE TABLE changes (
	id BIGSERIAL NOT NULL, 
	source VARCHAR(64) NOT NULL, 
	document_id VARCHAR(32) NOT NULL, 
	size BIGINT NOT NULL, 
	recorded_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id)
);

CREATE INDEX ix_changes_source_id ON changes (source, id);

CREATE TABLE documents (
	id VARCHAR(32) NOT NULL, 
	source VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	shard_key BIGINT NOT NULL, 
	size BIGINT NOT NULL, 
	mtime_ns BIGINT NOT NULL, 
	disk_hash VARCHAR(64) NOT NULL, 
	processed_hash VARCHAR(64), 
	chunked_hash VARCHAR(64), 
	chunk_settings VARCHAR(128), 
	status VARCHAR(16) NOT NULL, 
	reason TEXT, 
	text TEXT, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_documents_source_path UNIQUE (source, path)
);

CREATE INDEX ix_documents_shard_key ON documents (shard_key);

CREATE TABLE embeddings (
	model_id VARCHAR(128) NOT NULL, 
	chunk_hash VARCHAR(64) NOT NULL, 
	vector BYTEA NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (model_id, chunk_hash)
);

CREATE TABLE chunks (
	id BIGSERIAL NOT NULL, 
	document_id VARCHAR(32) NOT NULL, 
	ordinal INTEGER NOT NULL, 
	chunk_hash VARCHAR(64) NOT NULL, 
	text TEXT NOT NULL, 
	token_count INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(document_id) REFERENCES documents (id)
);

CREATE INDEX ix_chunks_chunk_hash ON chunks (chunk_hash);

CREATE INDEX ix_chunks_document_id ON chunks (document_id);
