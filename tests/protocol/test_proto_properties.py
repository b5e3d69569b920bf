"""Whatever arrives, the parsers answer with a value or a ProtocolError: never another exception type."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from worker.errors import ProtocolError
from worker.protocol.response import parse_response_document, parse_response_envelope
from worker.protocol.result import parse_queue_timeout, parse_result_document, parse_result_envelope

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
ENVELOPE_PARSERS: list[Callable[[bytes], object]] = [
    parse_response_envelope,
    parse_result_envelope,
    parse_queue_timeout,
]
DOCUMENT_PARSERS: list[Callable[[str], object]] = [parse_response_document, parse_result_document]
NAMES = [
    "Envelope",
    "Body",
    "Header",
    "Fault",
    "faultstring",
    "ResponseMsg",
    "ResultMsg",
    "Response",
    "response",
    "Result",
    "result",
    "ResponseCode",
    "ResultCode",
    "ResultType",
    "ResultParameters",
    "ResultParameter",
    "Parameter",
    "Parameters",
    "ReferenceData",
    "ReferenceItem",
    "Key",
    "Value",
    "TransactionID",
    "ConversationID",
    "notifyQueueTimeout",
    "originRequest",
    "originatorConversationID",
    "extensionInfo",
    "item",
]
NAMESPACES = [None, SOAP, "http://api-v1.gen.mm.vodafone.com/mminterface/result", "urn:x"]
TEXT = st.text(max_size=40)


def _tree() -> st.SearchStrategy[etree._Element]:
    def leaf(name: str, namespace: str | None, text: str) -> etree._Element:
        node = etree.Element(f"{{{namespace}}}{name}" if namespace else name)
        try:
            node.text = text
        except ValueError:
            node.text = None
        return node

    leaves = st.builds(leaf, st.sampled_from(NAMES), st.sampled_from(NAMESPACES), TEXT)

    def parent(name: str, namespace: str | None, children: list[etree._Element]) -> etree._Element:
        node = etree.Element(f"{{{namespace}}}{name}" if namespace else name)
        for item in children:
            node.append(item)
        return node

    return st.recursive(
        leaves,
        lambda inner: st.builds(
            parent, st.sampled_from(NAMES), st.sampled_from(NAMESPACES), st.lists(inner, max_size=4)
        ),
        max_leaves=25,
    )


def _outcome(parse: Callable[[bytes], object] | Callable[[str], object], data: object) -> None:
    with suppress(ProtocolError):
        parse(data)  # type: ignore[arg-type]


@pytest.mark.parametrize("parse", ENVELOPE_PARSERS)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes(parse: Callable[[bytes], object], data: bytes) -> None:
    _outcome(parse, data)


@pytest.mark.parametrize("parse", DOCUMENT_PARSERS)
@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.characters(exclude_categories=()), max_size=400))
def test_arbitrary_text_documents(parse: Callable[[str], object], text: str) -> None:
    _outcome(parse, text)


@pytest.mark.parametrize("parse", ENVELOPE_PARSERS)
@settings(max_examples=300, deadline=None)
@given(tree=_tree())
def test_random_trees_of_protocol_names(parse: Callable[[bytes], object], tree: etree._Element) -> None:
    _outcome(parse, etree.tostring(tree))


@pytest.mark.parametrize("parse", ENVELOPE_PARSERS[:2])
@settings(max_examples=300, deadline=None)
@given(inner=_tree(), message=st.sampled_from(["ResponseMsg", "ResultMsg"]), as_cdata=st.booleans())
def test_random_documents_inside_a_real_envelope(
    parse: Callable[[bytes], object], inner: etree._Element, message: str, as_cdata: bool
) -> None:
    envelope = etree.Element(f"{{{SOAP}}}Envelope")
    body = etree.SubElement(envelope, f"{{{SOAP}}}Body")
    holder = etree.SubElement(body, message)
    text = etree.tostring(inner, encoding="unicode")
    holder.text = etree.CDATA(text) if as_cdata and "]]>" not in text else text
    _outcome(parse, etree.tostring(envelope))


@pytest.mark.parametrize("parse", ENVELOPE_PARSERS[:2])
@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=30), suffix=st.binary(max_size=30), cut=st.integers(min_value=0, max_value=400))
def test_mangled_real_messages(parse: Callable[[bytes], object], prefix: bytes, suffix: bytes, cut: int) -> None:
    real = (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        b'<ResultMsg xmlns="http://api-v1.gen.mm.vodafone.com/mminterface/result">'
        b'<![CDATA[<?xml version="1.0"?>'
        b"<Result><ResultCode>0</ResultCode><ResultParameters><ResultParameter><Key>TransactionAmount</Key>"
        b"<Value>10</Value></ResultParameter></ResultParameters></Result>]]></ResultMsg></s:Body></s:Envelope>"
    )
    _outcome(parse, prefix + real[:cut] + suffix)
    _outcome(parse, real.replace(b"ResultMsg", b"ResponseMsg")[:cut] + suffix)
