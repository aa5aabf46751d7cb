"""Core statements compiled once and run on the database driver's cursor.

dicomd runs the same few statements for every instance it stores. SQLAlchemy
finds a cached statement's compiled form quickly, but building the
execution context and result of each execution still took about 20
microseconds of Python per statement, more than SQLite took to run it. A
DriverStatement keeps the SQL text, the order of its parameters and
SQLAlchemy's conversions of their values (dates and times for SQLite) from
one compilation, and runs on the DBAPI cursor of a Connection, inside the
Connection's transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Dialect, Executable


@dataclass(frozen=True)
class DriverStatement:
    """A statement compiled for one dialect, with the names and value conversions of its parameters."""

    sql: str
    names: tuple[str, ...]
    conversions: tuple[Callable[[Any], Any] | None, ...]
    positional: bool
    # Parameters whose values the statement fixes: literal values and scalar column defaults.
    fixed: Mapping[str, Any] = field(default_factory=dict)
    # Parameters whose values a function gives at each execution: column defaults such as the current time.
    computed: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    # The names of the columns that the statement returns, and SQLAlchemy's conversions of their values.
    result_names: tuple[str, ...] = ()
    result_conversions: tuple[Callable[[Any], Any] | None, ...] = ()

    @classmethod
    def compile(cls, statement: Executable, dialect: Dialect, columns: Iterable[str] | None = None) -> DriverStatement:
        """Compile `statement`; for an INSERT without values, `columns` names the columns that each execution sets.

        Column defaults and update defaults apply as SQLAlchemy applies them.
        """
        compiled = statement.compile(dialect=dialect, column_keys=list(columns) if columns is not None else None)
        if compiled.positional:
            names = tuple(compiled.positiontup)
        else:
            names = tuple(dict.fromkeys(compiled.bind_names.values()))

        fixed, computed = {}, {}
        defaults = {column.key: column.default for column in compiled.insert_prefetch}
        defaults.update({column.key: column.onupdate for column in compiled.update_prefetch})
        for name in names:
            default = defaults.get(name)
            parameter = compiled.binds[name]
            # SQLAlchemy computes only value and function defaults before execution;
            # a SQL expression default is part of the SQL text.
            if default is not None and default.is_scalar:
                fixed[name] = default.arg
            elif default is not None:
                # SQLAlchemy passes its execution context, which a plain function ignores.
                computed[name] = functools.partial(default.arg, None)
            elif not parameter.required and parameter.value is not None:
                fixed[name] = parameter.value

        conversions = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
        )
        # A SELECT's columns, or the RETURNING columns of an INSERT or UPDATE.
        returned = tuple(compiled.statement.exported_columns)
        result_names = tuple(column.key for column in returned)
        # The DBAPI type code is not needed by the conversions of the types dicomd reads.
        result_conversions = tuple(column.type.dialect_impl(dialect).result_processor(dialect, None)
                                   for column in returned)
        return cls(compiled.string, names, conversions, compiled.positional, fixed, computed,
                   result_names, result_conversions)

    def execute(self, connection: Connection, values: Mapping[str, Any]):
        """Run the statement with `values` in `connection`'s transaction; return the DBAPI cursor for its rows."""
        values = {**self.fixed, **{name: compute() for name, compute in self.computed.items()}, **values}
        converted = [
            convert(values[name]) if convert is not None else values[name]
            for name, convert in zip(self.names, self.conversions)
        ]
        cursor = connection.connection.cursor()
        cursor.execute(self.sql, converted if self.positional else dict(zip(self.names, converted)))
        return cursor

    def first(self, connection: Connection, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Run the statement and return its first row as a dict of converted values, or None without rows."""
        row = self.execute(connection, values).fetchone()
        if row is None:
            return None
        return {
            name: convert(value) if convert is not None else value
            for name, convert, value in zip(self.result_names, self.result_conversions, row)
        }
