"""The Store: Grace's durable state, made of parts (documents, chunks, embeddings, tasks, ...)."""
