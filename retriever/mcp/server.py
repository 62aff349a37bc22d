"""The Model Context Protocol server of `retriever mcp`: read-only tools over one collection,
spoken over stdin/stdout (the `mcp` SDK's MCPServer and stdio transport).

    search           by words: images, texts, videos or all; k; folder, after/before, tag
    search_by_image  by an image file inside the indexed folders; the same filters
    more_like        like an indexed item (its stored vector); the same filters
    show_item        an item's path, caption or passage, date, page/section or video time,
                     tags, and its thumbnail as image content
    info             counts, model, folders, files that could not be indexed
    duplicates       groups of near-identical images
    tags             the labels `retriever tag` placed, with counts

Arguments are typed in each tool's signature (the SDK publishes them as its JSON schema and
checks them); a refused argument, an unknown one, or a library error becomes a tool error of
one line naming the tool, and the session goes on. A crash is the SDK's generic tool error
(its traceback goes to stderr). stdout carries protocol messages only: the stdio transport
points file descriptor 1 at stderr while it serves, and logs go to stderr.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, cast

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp_types import (
    CallToolResult,
    ImageContent,
    InputRequiredResult,
    TextContent,
    ToolAnnotations,
)
from pydantic import Field, ValidationError

from retriever import __version__
from retriever.encoding.encoders import Encoder
from retriever.errors import RetrieverError
from retriever.library.collection import Collection
from retriever.mcp.tools import MAX_K, Filters, Tools
from retriever.present.output import visible
from retriever.search.query import DEFAULT_TARGET, MAX_ID
from retriever.server.app import LiveCollection

INSTRUCTIONS = (
    "Search the user's own photos, videos and documents, indexed by retriever. Results are "
    "items: an id, the file's path, a score (cosine, higher is closer) and, for text, the "
    "passage. Pass an id to show_item to see the item (a thumbnail for pictures) or to "
    "more_like for items like it. Nothing here changes the index or the files.")
MAX_TEXT = 10_000  # characters of a query in words: a model reads the first few hundred
MAX_PATH = 4096  # characters of a path (Linux's PATH_MAX)
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)

# The arguments' types: the schema an assistant reads, and what the SDK checks
TargetName = Literal["images", "texts", "videos", "all"]  # retriever.search.query.TARGETS
DEFAULT: TargetName = cast(TargetName, DEFAULT_TARGET)
Target = Annotated[TargetName, Field(
    description="What to find: images (photos), texts (document passages, words read in "
                "images), videos (video frames), or all.")]
K = Annotated[int, Field(strict=True, ge=1, le=MAX_K, description="How many results.")]
ItemId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID,
                              description="An item id from a search result.")]
Folder = Annotated[str | None, Field(max_length=MAX_PATH, description=(
    "Only files under this absolute folder, as result paths show it."))]
After = Annotated[str | None, Field(
    description="Only files taken (EXIF date, else modified) on or after YYYY-MM-DD.")]
Before = Annotated[str | None, Field(
    description="Only files taken (EXIF date, else modified) before YYYY-MM-DD.")]
Tag = Annotated[str | None, Field(description="Only images tagged with this label (see tags).")]
Threshold = Annotated[float, Field(ge=-1, le=1, description=(
    "Cosine at or above which two images count as near-identical."))]
Results = dict[str, Any]


class RetrieverMcp(MCPServer):
    """MCPServer whose tool errors are one line naming the tool: the SDK's own wording of a
    refused argument is a multi-line pydantic report, and it hides a library error's text
    (the fix) as if it were a crash."""

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[Any, Any] | None = None
                        ) -> CallToolResult | InputRequiredResult:
        await self._check_names(name, arguments)
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError as error:
            if not isinstance(error.__cause__, RetrieverError):
                raise  # a crash: the SDK's generic message, the traceback on stderr
            raise ToolError(_line(f"{name}: {error.__cause__}")) from error.__cause__
        except ToolError as error:
            if not isinstance(error.__cause__, ValidationError):
                raise
            raise ToolError(_refused(name, error.__cause__)) from error.__cause__

    async def _check_names(self, name: str, arguments: dict[str, Any]) -> None:
        """A misspelt argument (a filter) is refused, not ignored: results would be unfiltered."""
        schema = next((t.input_schema for t in await self.list_tools() if t.name == name), None)
        if schema is None:
            return  # the SDK answers an unknown tool
        known = list(schema.get("properties", {}))
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise ToolError(_line(f"{name}: unknown argument {unknown[0]!r}: use "
                                  f"{', '.join(known) or 'none'}"))


def create_server(collection: Collection, encoder: Encoder,
                  reload: Callable[[Collection], Encoder] | None = None) -> RetrieverMcp:
    """The MCP server over `collection`, searched with `encoder` (the index's model; `reload`
    loads the index's new one after a switch, as `LiveCollection` tells)."""
    server = RetrieverMcp("retriever", version=__version__, instructions=INSTRUCTIONS,
                          log_level="WARNING")
    tools = Tools(LiveCollection(collection, encoder, reload))
    _search_tools(server, tools)
    _collection_tools(server, tools)
    return server


def serve_stdio(collection: Collection, encoder: Encoder,
                reload: Callable[[Collection], Encoder] | None = None) -> None:
    """Answer one client on stdin/stdout until it closes stdin."""
    create_server(collection, encoder, reload).run("stdio")


def _search_tools(server: MCPServer, tools: Tools) -> None:
    @server.tool(annotations=READ_ONLY)
    def search(text: Annotated[str, Field(max_length=MAX_TEXT,
                                          description="What to look for, in words.")],
               target: Target = DEFAULT, k: K = 10, folder: Folder = None,
               after: After = None, before: Before = None, tag: Tag = None) -> Results:
        """Find the user's photos, video moments and document passages by words."""
        return tools.search(Filters(folder, after, before, tag).query(target, k, text=text))

    @server.tool(annotations=READ_ONLY)
    def search_by_image(
            path: Annotated[str, Field(max_length=MAX_PATH, description=(
                "Absolute path of an image file inside the indexed folders."))],
            target: Target = DEFAULT, k: K = 10, folder: Folder = None,
            after: After = None, before: Before = None, tag: Tag = None) -> Results:
        """Find items like an image file (only one inside the indexed folders)."""
        image = tools.query_image(path)
        return tools.search(Filters(folder, after, before, tag).query(target, k, image=image))

    @server.tool(annotations=READ_ONLY)
    def more_like(item: ItemId, target: Target = DEFAULT, k: K = 10,
                  folder: Folder = None, after: After = None, before: Before = None,
                  tag: Tag = None) -> Results:
        """Find items like an indexed item (the item itself comes first)."""
        return tools.search(Filters(folder, after, before, tag).query(target, k, item=item))


def _collection_tools(server: MCPServer, tools: Tools) -> None:
    @server.tool(annotations=READ_ONLY)
    def show_item(item: ItemId) -> CallToolResult:
        """Show one item: path, caption or passage, date, page/section or video time, tags,
        and a thumbnail (JPEG) for photos and video frames."""
        shown = tools.show(item)
        content: list[TextContent | ImageContent] = [
            TextContent(type="text", text=json.dumps(shown.record, indent=2))]
        if shown.jpeg is not None:
            content.append(ImageContent(type="image", mime_type="image/jpeg",
                                        data=base64.b64encode(shown.jpeg).decode()))
        return CallToolResult(content=list(content), structured_content=shown.record)

    @server.tool(annotations=READ_ONLY)
    def info() -> Results:
        """What the index holds (counts by kind), its model, folders, and failed files."""
        return tools.info()

    @server.tool(annotations=READ_ONLY)
    def duplicates(threshold: Threshold | None = None, folder: Folder = None) -> Results:
        """Groups of near-identical images, best copy first; same bytes are marked. Default
        threshold: the one `retriever duplicates` measured for this index, else a fixed one."""
        return tools.duplicates(threshold, folder)

    @server.tool(annotations=READ_ONLY)
    def tags() -> Results:
        """The labels `retriever tag` gave images, with how many carry each."""
        return tools.tags()


def _refused(name: str, error: ValidationError) -> str:
    """A refused argument in one line: the first problem, and how many more there are."""
    problems = error.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    if first["type"] == "missing":
        return _line(f"{name}: {where} is required{more}")
    given = repr(first.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    return _line(f"{name}: {where}: {first['msg']}, not {given}{more}")


def _line(text: str) -> str:
    return visible(text)
