"""The project's own wsdl/ must describe the same interface as the files Safaricom ships.

"Same interface" means what reaches the wire: namespaces, operations, SOAP actions, header parts, body
elements, and for every schema the tree of element names in order with their occurrence bounds. Type
names, annotations and layout are the project's own. Known misspellings in the shipped files are corrected
(see ``CORRECTIONS``), and each correction must be backed by a sample message that uses the corrected name.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from zeep import Client, Settings
from zeep.transports import Transport

from tests.support.data import G2_REFERENCE, G2_SAMPLES

pytestmark = pytest.mark.conformance

WSDL_DIR = Path(__file__).resolve().parents[2] / "wsdl"
REFERENCE = G2_REFERENCE
SAMPLES = G2_SAMPLES

XS = "http://www.w3.org/2001/XMLSchema"
WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"

# project file -> the reference file it must match
PAIRS = {
    "CBPInterface_Request.wsdl": "CBPInterface_Request.wsdl",
    "CBPInterface_Result.wsdl": "CBPInterface_Result.wsdl",
    "QueryTransaction_1_0.wsdl": "QueryTransaction_1_0.wsdl",
    "QueueTimeoutNotification_1_0.wsdl": "QueueTimeoutNofication_1_0.wsdl",
    "CPSInterface_Request.xsd": "CPSInterface_Request.xsd",
    "CPSInterface_Response.xsd": "CPSInterface_Response.xsd",
    "CPSInterface_Result.xsd": "CPSInterface_Result.xsd",
    "parlayx_common_head_types_2_1.xsd": "parlayx_common_head_types_2_1.xsd",
}
WSDLS = [name for name in PAIRS if name.endswith(".wsdl")]

# misspelt name in the shipped files -> the spelling on the wire, and a sample that proves it
CORRECTIONS = {
    "PrimartyParty": ("PrimaryParty", "g2_v15_01_GenericAPIRequest_B2C_PromotionPayment_with_ResultURL.xml"),
    "originReqeust": ("originRequest", "g2_v15_08_notifyQueueTimeout_and_response.xml"),
    "queryTranscation": ("queryTransaction", "g2_v15_09_queryTransaction_request_and_response.xml"),
    "queryTranscationResponse": (
        "queryTransactionResponse",
        "g2_v15_09_queryTransaction_request_and_response.xml",
    ),
}


def _corrected(name: str) -> str:
    fix = CORRECTIONS.get(name)
    return fix[0] if fix else name


def _parse(path: Path) -> etree._Element:
    return etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True)).getroot()


class SchemaSet:
    """All schemas reachable from one file (inline WSDL schemas plus their local imports)."""

    def __init__(self, path: Path) -> None:
        self.schemas: list[etree._Element] = []
        self._load(path, set())

    def _load(self, path: Path, seen: set[Path]) -> None:
        if path in seen:
            return
        seen.add(path)
        root = _parse(path)
        found = [root] if root.tag == f"{{{XS}}}schema" else list(root.iter(f"{{{XS}}}schema"))
        for schema in found:
            self.schemas.append(schema)
            for imp in schema.findall(f"{{{XS}}}import") + schema.findall(f"{{{XS}}}include"):
                location = imp.get("schemaLocation")
                if location:
                    self._load(path.parent / location, seen)

    def _resolve(self, qname: str, context: etree._Element) -> etree._Element | None:
        prefix, _, local = qname.rpartition(":")
        namespace = context.nsmap.get(prefix or None)
        if namespace == XS:
            return None
        for schema in self.schemas:
            if schema.get("targetNamespace") != namespace:
                continue
            for node in schema.findall(f"{{{XS}}}complexType"):
                if node.get("name") == local:
                    return node
            if any(node.get("name") == local for node in schema.findall(f"{{{XS}}}simpleType")):
                return None
        raise AssertionError(f"unresolved type {qname}")

    def element_tree(self, element: etree._Element, path: str = "") -> list[tuple[str, str, str]]:
        """(path, minOccurs, maxOccurs) for the element and, depth first, everything it contains."""
        here = f"{path}/{{{_schema_of(element).get('targetNamespace')}}}{_corrected(element.get('name', '?'))}"
        rows = [(here, element.get("minOccurs", "1"), element.get("maxOccurs", "1"))]
        complex_type = element.find(f"{{{XS}}}complexType")
        if complex_type is None and element.get("type"):
            complex_type = self._resolve(element.get("type", ""), element)
        if complex_type is not None:
            rows += self._content(complex_type, here)
        return rows

    def _content(self, complex_type: etree._Element, path: str) -> list[tuple[str, str, str]]:
        rows: list[tuple[str, str, str]] = []
        for node in complex_type.iter(f"{{{XS}}}extension", f"{{{XS}}}element"):
            if _nearest_complex_type(node) is not complex_type:
                continue
            if node.tag == f"{{{XS}}}extension":
                base = self._resolve(node.get("base", ""), node)
                if base is not None:
                    rows += self._content(base, path)
            else:
                rows += self.element_tree(node, path)
        return rows

    def global_elements(self, namespace: str | None = None) -> dict[str, list[tuple[str, str, str]]]:
        result: dict[str, list[tuple[str, str, str]]] = {}
        for schema in self.schemas:
            target = schema.get("targetNamespace")
            if namespace is not None and target != namespace:
                continue
            for element in schema.findall(f"{{{XS}}}element"):
                result[f"{{{target}}}{_corrected(element.get('name', ''))}"] = self.element_tree(element)
        return result


def _schema_of(node: etree._Element) -> etree._Element:
    """Every schema here is elementFormDefault="qualified": an element lives in its schema's namespace."""
    schema = next(node.iterancestors(f"{{{XS}}}schema"))
    assert schema.get("elementFormDefault") == "qualified"
    return schema


def _nearest_complex_type(node: etree._Element) -> etree._Element | None:
    parent = node.getparent()
    while parent is not None and parent.tag != f"{{{XS}}}complexType":
        parent = parent.getparent()
    return parent


def _qname(node: etree._Element, attribute: str) -> str:
    prefix, _, local = (node.get(attribute) or "").rpartition(":")
    return f"{{{node.nsmap.get(prefix or None)}}}{_corrected(local)}"


def _wsdl_interface(path: Path) -> dict[str, Any]:
    """Everything of a WSDL that shows on the wire, with message references resolved to their parts."""
    root = _parse(path)
    schemas = SchemaSet(path)
    messages = {
        message.get("name"): [
            (part.get("name"), _qname(part, "element")) for part in message.findall(f"{{{WSDL_NS}}}part")
        ]
        for message in root.findall(f"{{{WSDL_NS}}}message")
    }

    def parts(node: etree._Element | None) -> Any:
        if node is None:
            return None
        local = (node.get("message") or "").rpartition(":")[2]
        return messages[local]

    port_types = {
        port_type.get("name"): {
            op.get("name"): (parts(op.find(f"{{{WSDL_NS}}}input")), parts(op.find(f"{{{WSDL_NS}}}output")))
            for op in port_type.findall(f"{{{WSDL_NS}}}operation")
        }
        for port_type in root.findall(f"{{{WSDL_NS}}}portType")
    }
    bindings = {}
    for binding in root.findall(f"{{{WSDL_NS}}}binding"):
        soap_binding = binding.find(f"{{{SOAP_NS}}}binding")
        assert soap_binding is not None
        operations = {}
        for op in binding.findall(f"{{{WSDL_NS}}}operation"):
            soap_op = op.find(f"{{{SOAP_NS}}}operation")
            assert soap_op is not None
            headers = [
                (parts(header), header.get("part"), header.get("use"))
                for header in op.iterfind(f"{{{WSDL_NS}}}input/{{{SOAP_NS}}}header")
            ]
            bodies = [body.get("use") for body in op.iterfind(f".//{{{SOAP_NS}}}body")]
            operations[op.get("name")] = (soap_op.get("soapAction"), soap_op.get("style"), headers, bodies)
        port_type = (binding.get("type") or "").rpartition(":")[2]
        bindings[binding.get("name")] = (
            soap_binding.get("style"),
            soap_binding.get("transport"),
            port_type,
            operations,
        )
    services = {
        service.get("name"): {
            port.get("name"): (port.get("binding") or "").rpartition(":")[2]
            for port in service.findall(f"{{{WSDL_NS}}}port")
        }
        for service in root.findall(f"{{{WSDL_NS}}}service")
    }
    inline_namespaces = [s.get("targetNamespace") for s in root.iter(f"{{{XS}}}schema")]
    elements: dict[str, Any] = {}
    for namespace in inline_namespaces:
        elements.update(schemas.global_elements(namespace))
    return {
        "targetNamespace": root.get("targetNamespace"),
        "schemaNamespaces": sorted(ns for ns in inline_namespaces if ns),
        "portTypes": port_types,
        "bindings": bindings,
        "services": services,
        "elements": elements,
    }


def _schema_interface(path: Path) -> dict[str, Any]:
    root = _parse(path)
    return {
        "targetNamespace": root.get("targetNamespace"),
        "elementFormDefault": root.get("elementFormDefault"),
        "imports": sorted(imp.get("namespace") or "" for imp in root.findall(f"{{{XS}}}import")),
        "elements": SchemaSet(path).global_elements(root.get("targetNamespace")),
    }


def test_every_project_file_is_paired_with_a_reference() -> None:
    shipped = {path.name for path in WSDL_DIR.iterdir() if path.suffix in (".wsdl", ".xsd")}
    assert shipped == set(PAIRS)


@pytest.mark.parametrize("name", [n for n in PAIRS if n.endswith(".wsdl")])
def test_wsdl_matches_reference(name: str) -> None:
    assert _wsdl_interface(WSDL_DIR / name) == _wsdl_interface(REFERENCE / PAIRS[name])


@pytest.mark.parametrize("name", [n for n in PAIRS if n.endswith(".xsd")])
def test_schema_matches_reference(name: str) -> None:
    ours = _schema_interface(WSDL_DIR / name)
    assert ours == _schema_interface(REFERENCE / PAIRS[name])
    assert ours["elements"], "a schema with no global element describes nothing"


def test_request_schema_matches_the_inline_schema_without_corrections() -> None:
    """The inline-schema WSDL already spells PrimaryParty; ours must match it with no correction at all."""
    inline = SchemaSet(REFERENCE / "CBPInterface_Request_inline.wsdl").global_elements()
    ours = SchemaSet(WSDL_DIR / "CPSInterface_Request.xsd").global_elements()
    request = "{http://api-v1.gen.mm.vodafone.com/mminterface/request}request"
    assert ours[request] == inline[request]
    assert any(path.rsplit("}", 1)[1] == "PrimaryParty" for path, _, _ in ours[request])


@pytest.mark.parametrize("misspelt", sorted(CORRECTIONS))
def test_each_correction_is_what_the_samples_send(misspelt: str) -> None:
    corrected, sample = CORRECTIONS[misspelt]
    text = (SAMPLES / sample).read_text(encoding="utf-8")
    assert f":{corrected}>" in text or f"<{corrected}>" in text
    assert misspelt not in text
    reference_text = "".join(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.[wx]sd*"))
    assert f'"{misspelt}"' in reference_text, "a correction of a name the reference does not use"
    ours = "".join(p.read_text(encoding="utf-8") for p in WSDL_DIR.iterdir())
    assert f'name="{misspelt}"' not in ours


def test_comparison_notices_a_reordered_element(tmp_path: Path) -> None:
    """Guard against a comparison that cannot fail: swapping two elements must change the interface."""
    text = (WSDL_DIR / "CPSInterface_Response.xsd").read_text(encoding="utf-8")
    code = '<xs:element name="ResponseCode"'
    desc = '<xs:element name="ResponseDesc"'
    swapped = text.replace(code, "@@").replace(desc, code).replace("@@", desc)
    (tmp_path / "CPSInterface_Response.xsd").write_text(swapped, encoding="utf-8")
    assert _schema_interface(tmp_path / "CPSInterface_Response.xsd") != _schema_interface(
        WSDL_DIR / "CPSInterface_Response.xsd"
    )


def test_no_file_refers_to_anything_outside_the_folder() -> None:
    for path in WSDL_DIR.iterdir():
        root = _parse(path)
        for node in root.iter(f"{{{XS}}}import", f"{{{XS}}}include", f"{{{WSDL_NS}}}import"):
            location = node.get("schemaLocation") or node.get("location")
            assert location, f"{path.name}: import of {node.get('namespace')} without a local file"
            assert "/" not in location and ":" not in location, f"{path.name}: {location} is not local"
            assert (WSDL_DIR / location).is_file()


@pytest.mark.parametrize("name", WSDLS)
def test_zeep_loads_the_wsdl_offline(name: str) -> None:
    class OfflineTransport(Transport):
        def load(self, url: str) -> bytes:
            assert "://" not in url or url.startswith("file://"), f"zeep tried to fetch {url}"
            loaded: bytes = super().load(url)  # type: ignore[no-untyped-call]
            return loaded

    settings = Settings(forbid_dtd=True, forbid_entities=True, forbid_external=True, xml_huge_tree=False)
    client = Client(str(WSDL_DIR / name), settings=settings, transport=OfflineTransport())  # type: ignore[no-untyped-call]
    operations = {
        op
        for service in client.wsdl.services.values()
        for port in service.ports.values()
        for op in port.binding._operations
    }
    expected = {
        "CBPInterface_Request.wsdl": {"GenericAPIRequest"},
        "CBPInterface_Result.wsdl": {"GenericAPIResult"},
        "QueryTransaction_1_0.wsdl": {"queryTransaction"},
        "QueueTimeoutNotification_1_0.wsdl": {"notifyQueueTimeout"},
    }[name]
    assert operations == expected


def test_request_schema_validates_the_specification_sample_inner_document() -> None:
    sample = SAMPLES / "g2_v15_01_GenericAPIRequest_B2C_PromotionPayment_with_ResultURL.xml"
    text = sample.read_bytes()
    inner = text.split(b"<![CDATA[", 1)[1].split(b"]]>", 1)[0]
    schema = etree.XMLSchema(_parse(WSDL_DIR / "CPSInterface_Request.xsd"))
    document = etree.fromstring(inner, etree.XMLParser(resolve_entities=False, no_network=True))
    assert schema.validate(document), schema.error_log
    misspelt = etree.fromstring(inner.replace(b"PrimaryParty", b"PrimartyParty"))
    assert not schema.validate(misspelt)


def test_built_wheel_ships_the_wsdl_folder(tmp_path: Path) -> None:
    project = WSDL_DIR.parent
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    (wheel,) = tmp_path.glob("mpesa_b2c-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in PAIRS:
        assert f"worker/_data/wsdl/{name}" in names
    assert "worker/resources.py" in names
