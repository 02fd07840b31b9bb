"""Operations beside the coordinator: maintenance, monitoring, backup and the DuckDB migration.

They work on the store through its named methods and never issue SQL against its tables themselves.
"""
