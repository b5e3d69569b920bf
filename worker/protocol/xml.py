"""Hardened parsing of untrusted XML: no DTDs, no entities, no network, no huge trees.

Every byte that comes from the network (a SOAP envelope, the CDATA document inside it) goes through
:func:`parse_untrusted`; nothing else in the package builds an ``XMLParser`` for untrusted input.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from worker.errors import ProtocolError, UnsafeXmlError

MAX_XML_BYTES = 1_000_000


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=True,
        strip_cdata=True,
        collect_ids=False,
    )


def parse_untrusted(data: bytes | str, *, max_bytes: int = MAX_XML_BYTES) -> etree._Element:
    """Parse one untrusted document: UnsafeXmlError for DTDs, entities, oversize; ProtocolError otherwise."""
    try:
        raw = data.encode("utf-8") if isinstance(data, str) else data
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"text that is not valid Unicode: {exc.reason}") from exc
    if len(raw) > max_bytes:
        raise UnsafeXmlError(f"XML document of {len(raw)} bytes exceeds the {max_bytes} byte limit")
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw or b"<!doctype" in raw:
        raise UnsafeXmlError("XML with a DTD or entity declaration is refused")
    raw = raw.lstrip()
    if isinstance(data, str) and raw.startswith(b"<?xml"):
        # A str that carried its own declaration was decoded already; lxml wants bytes that agree with it.
        _, closed, rest = raw.partition(b"?>")
        if not closed:
            raise ProtocolError("malformed XML: the XML declaration is not closed")
        raw = rest.lstrip()
    try:
        root = etree.fromstring(raw, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise ProtocolError(f"malformed XML: {exc.msg}") from exc
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise UnsafeXmlError("XML with a DTD is refused")
    for node in root.iter():
        if isinstance(node, etree._Entity):
            raise UnsafeXmlError("XML with entity references is refused")
    return root


def local_name(element: etree._Element) -> str:
    """The tag without its namespace: real M-PESA traffic mixes namespaces freely."""
    return etree.QName(element).localname


def child(element: etree._Element, name: str, *, ignore_case: bool = True) -> etree._Element | None:
    """First direct child with this local name, in any namespace (case-insensitive by default)."""
    wanted = name.lower() if ignore_case else name
    for node in element:
        if not isinstance(node.tag, str):  # comments and processing instructions
            continue  # type: ignore[unreachable]
        tag = local_name(node)
        if (tag.lower() if ignore_case else tag) == wanted:
            return node
    return None


def child_text(element: etree._Element, name: str, *, ignore_case: bool = True) -> str | None:
    """Stripped text of the first matching child, or None when the child is absent."""
    node = child(element, name, ignore_case=ignore_case)
    if node is None:
        return None
    return (node.text or "").strip()


def descendant(element: etree._Element, name: str, *, ignore_case: bool = True) -> etree._Element | None:
    """First descendant (depth-first) with this local name, in any namespace."""
    wanted = name.lower() if ignore_case else name
    for node in element.iter():
        if not isinstance(node.tag, str) or node is element:
            continue
        tag = local_name(node)
        if (tag.lower() if ignore_case else tag) == wanted:
            return node
    return None
