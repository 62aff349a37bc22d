"""`retriever mcp`: the collection served to AI assistants over the Model Context Protocol.

    tools.py    what each tool answers (searches, an item and its thumbnail, info, duplicates,
                tags), over the same live collection `retriever serve` keeps; no protocol here
    server.py   the MCP server (the `mcp` SDK's MCPServer): the tools' typed arguments, errors
                as one-line tool errors, the stdio transport
"""
