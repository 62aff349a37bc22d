"""The store's tables as SQLAlchemy mapped classes, as index/migrations.py makes them.

Imported with SQLAlchemy when a store is first opened through it (`index.store.Store`); a
one-off search of a current SQLite store reads through sqlite3 alone and never imports them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """The tables as migrations.py makes them; integers are 64-bit on every database."""


class CollectionModel(Base):
    """The one model every vector in this store was made with."""

    __tablename__ = "collection_model"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    pretrained: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    fingerprint: Mapped[str | None] = mapped_column(String, nullable=True)  # config + weights


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    path: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)
    content_hash: Mapped[str] = mapped_column(String)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[float] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    height: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    caption: Mapped[str | None] = mapped_column(String, nullable=True)
    indexed_at: Mapped[float] = mapped_column(Float)
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # EXIF date, else mtime
    items: Mapped[list[Item]] = relationship(
        back_populates="file", cascade="all, delete-orphan", passive_deletes=True
    )


class Item(Base):
    """One embedded unit: an image (position 0) or passage number `position` of a text."""

    __tablename__ = "items"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # == FAISS id
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String)
    position: Mapped[int] = mapped_column(BigInteger)
    passage: Mapped[str | None] = mapped_column(String, nullable=True)
    time: Mapped[float | None] = mapped_column(Float, nullable=True)  # video frames: seconds
    file: Mapped[File] = relationship(back_populates="items")
    vector: Mapped[Vector] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Vector(Base):
    __tablename__ = "vectors"
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)  # dim x float32, little-endian


class StoreState(Base):
    __tablename__ = "store_state"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)


class Run(Base):
    """One `retriever index` run: its status and what it did (JSON counts)."""

    __tablename__ = "runs"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String)  # running | completed | interrupted
    stats: Mapped[str] = mapped_column(String, default="{}")


class Failure(Base):
    """A file that could not be indexed, as it was when it failed (retried once it changes)."""

    __tablename__ = "failures"
    path: Mapped[str] = mapped_column(String, primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(String)
    run_id: Mapped[int] = mapped_column(BigInteger)


class Tag(Base):
    """A zero-shot label of an image item, one of the labels of `label_set` (migration 5)."""

    __tablename__ = "tags"
    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True)
    label_set: Mapped[str] = mapped_column(String, primary_key=True)  # sorted labels, JSON
    label: Mapped[str] = mapped_column(String, primary_key=True)
    score: Mapped[float] = mapped_column(Float)  # cosine to the label's prompt ensemble
