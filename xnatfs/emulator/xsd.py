"""Hand-written minimal XSDs served at ``/xapi/schemas/{name}`` (§8.1 items 7-8).

xnatpy builds its Python classes from these. The shapes follow the real ``xnat.xsd`` for the types
the emulator serves: complex types extending each other through ``xs:complexContent``, listings
as a wrapper element holding one ``maxOccurs="unbounded"`` child (``scans/scan``,
``experiments/experiment``, ``resources/resource``, ``fields/field``, ``out/file``), and
``xdat:element displayIdentifiers`` where the real schema has them.
"""

from __future__ import annotations

_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="http://nrg.wustl.edu/xnat" xmlns:xnat="http://nrg.wustl.edu/xnat"
  xmlns:xdat="http://nrg.wustl.edu/xdat" xmlns:xs="http://www.w3.org/2001/XMLSchema"
  elementFormDefault="qualified" attributeFormDefault="unqualified">
  <xs:import namespace="http://nrg.wustl.edu/xdat" schemaLocation="../xdat/xdat.xsd"/>
"""

_FIELDS = """
          <xs:element name="fields" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="field" minOccurs="0" maxOccurs="unbounded">
                  <xs:complexType>
                    <xs:simpleContent>
                      <xs:extension base="xs:string">
                        <xs:attribute name="name" type="xs:string" use="required"/>
                      </xs:extension>
                    </xs:simpleContent>
                  </xs:complexType>
                </xs:element>
              </xs:sequence>
            </xs:complexType>
          </xs:element>"""

_RESOURCES = """
          <xs:element name="resources" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="resource" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>"""


def _session_type(name: str, base: str = "xnat:imageSessionData") -> str:
    return f"""
  <xs:complexType name="{name}">
    <xs:complexContent>
      <xs:extension base="{base}">
        <xs:sequence>
          <xs:element name="fieldStrength" type="xs:string" minOccurs="0"/>
        </xs:sequence>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>"""


def _scan_type(name: str) -> str:
    return f"""
  <xs:complexType name="{name}">
    <xs:complexContent>
      <xs:extension base="xnat:imageScanData">
        <xs:sequence>
          <xs:element name="parameters" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="tr" type="xs:double" minOccurs="0"/>
                <xs:element name="te" type="xs:double" minOccurs="0"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>
        </xs:sequence>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>"""


#: concrete image session and scan types (each must exist for xnatpy's class lookup)
SESSION_TYPES = [
    "mrSessionData",
    "petSessionData",
    "ctSessionData",
    "usSessionData",
    "crSessionData",
    "otherDicomSessionData",
]
SCAN_TYPES = [
    "mrScanData",
    "petScanData",
    "ctScanData",
    "usScanData",
    "crScanData",
    "scScanData",
    "otherDicomScanData",
]

#: (top-level element name, complex type) pairs; element names are XML root names (§2.2).
ELEMENTS = [
    ("Project", "projectData"),
    ("Subject", "subjectData"),
    ("MRSession", "mrSessionData"),
    ("PETSession", "petSessionData"),
    ("CTSession", "ctSessionData"),
    ("USSession", "usSessionData"),
    ("CRSession", "crSessionData"),
    ("OtherDicomSession", "otherDicomSessionData"),
    ("MRScan", "mrScanData"),
    ("PETScan", "petScanData"),
    ("CTScan", "ctScanData"),
    ("USScan", "usScanData"),
    ("CRScan", "crScanData"),
    ("SCScan", "scScanData"),
    ("OtherDicomScan", "otherDicomScanData"),
    ("QCAssessment", "qcAssessmentData"),
    ("Resource", "resource"),
    ("ResourceCatalog", "resourceCatalog"),
    ("ImageSession", "imageSessionData"),
    ("ImageScan", "imageScanData"),
    ("ImageAssessor", "imageAssessorData"),
]

XNAT_XSD = (
    _HEAD
    + """
  <xs:complexType name="abstractResource" abstract="true">
    <xs:sequence>
      <xs:element name="note" type="xs:string" minOccurs="0"/>
      <xs:element name="tags" minOccurs="0">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="tag" minOccurs="0" maxOccurs="unbounded">
              <xs:complexType>
                <xs:simpleContent>
                  <xs:extension base="xs:string">
                    <xs:attribute name="name" type="xs:string"/>
                  </xs:extension>
                </xs:simpleContent>
              </xs:complexType>
            </xs:element>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
    </xs:sequence>
    <xs:attribute name="label" type="xs:string"/>
    <xs:attribute name="file_count" type="xs:integer"/>
    <xs:attribute name="file_size" type="xs:long"/>
  </xs:complexType>
  <xs:complexType name="resource">
    <xs:complexContent>
      <xs:extension base="xnat:abstractResource">
        <xs:attribute name="URI" type="xs:string" use="required"/>
        <xs:attribute name="format" type="xs:string"/>
        <xs:attribute name="description" type="xs:string"/>
        <xs:attribute name="content" type="xs:string"/>
        <xs:attribute name="cachePath" type="xs:string"/>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>
  <xs:complexType name="resourceCatalog">
    <xs:complexContent>
      <xs:extension base="xnat:resource"/>
    </xs:complexContent>
  </xs:complexType>

  <xs:complexType name="projectData">
    <xs:annotation><xs:appinfo><xdat:element displayIdentifiers="ID"/></xs:appinfo></xs:annotation>
    <xs:sequence>
      <xs:element name="name" type="xs:string"/>
      <xs:element name="description" type="xs:string" minOccurs="0"/>
      <xs:element name="keywords" type="xs:string" minOccurs="0"/>
      <xs:element name="aliases" minOccurs="0">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="alias" minOccurs="0" maxOccurs="unbounded">
              <xs:complexType>
                <xs:simpleContent>
                  <xs:extension base="xs:string">
                    <xs:attribute name="source" type="xs:string"/>
                  </xs:extension>
                </xs:simpleContent>
              </xs:complexType>
            </xs:element>
          </xs:sequence>
        </xs:complexType>
      </xs:element>"""
    + _FIELDS
    + """
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="secondary_ID" type="xs:string"/>
    <xs:attribute name="active" type="xs:string"/>
  </xs:complexType>

  <xs:complexType name="subjectData">
    <xs:annotation><xs:appinfo><xdat:element displayIdentifiers="label"/></xs:appinfo></xs:annotation>
    <xs:sequence>
      <xs:element name="group" type="xs:string" minOccurs="0"/>
      <xs:element name="src" type="xs:string" minOccurs="0"/>
      <xs:element name="initials" type="xs:string" minOccurs="0"/>"""
    + _RESOURCES
    + _FIELDS
    + """
      <xs:element name="experiments" minOccurs="0">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="experiment" type="xnat:subjectAssessorData" minOccurs="0" maxOccurs="unbounded"/>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string"/>
    <xs:attribute name="project" type="xs:string"/>
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>

  <xs:complexType name="experimentData" abstract="true">
    <xs:annotation><xs:appinfo><xdat:element displayIdentifiers="label"/></xs:appinfo></xs:annotation>
    <xs:sequence>
      <xs:element name="date" type="xs:date" minOccurs="0"/>
      <xs:element name="time" type="xs:time" minOccurs="0"/>
      <xs:element name="note" type="xs:string" minOccurs="0"/>
      <xs:element name="acquisition_site" type="xs:string" minOccurs="0"/>"""
    + _RESOURCES
    + _FIELDS
    + """
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="project" type="xs:string" use="required"/>
    <xs:attribute name="version" type="xs:string"/>
    <xs:attribute name="original" type="xs:string"/>
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>

  <xs:complexType name="subjectAssessorData" abstract="true">
    <xs:complexContent>
      <xs:extension base="xnat:experimentData">
        <xs:sequence>
          <xs:element name="subject_ID" type="xs:string"/>
        </xs:sequence>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>

  <xs:complexType name="imageSessionData" abstract="true">
    <xs:complexContent>
      <xs:extension base="xnat:subjectAssessorData">
        <xs:sequence>
          <xs:element name="scanner" type="xs:string" minOccurs="0"/>
          <xs:element name="operator" type="xs:string" minOccurs="0"/>
          <xs:element name="prearchivePath" type="xs:string" minOccurs="0"/>
          <xs:element name="modality" type="xs:string" minOccurs="0"/>
          <xs:element name="scans" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="scan" type="xnat:imageScanData" minOccurs="0" maxOccurs="unbounded"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>
          <xs:element name="reconstructions" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="reconstructedImage" type="xnat:reconstructedImageData" minOccurs="0" maxOccurs="unbounded"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>
          <xs:element name="assessors" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="assessor" type="xnat:imageAssessorData" minOccurs="0" maxOccurs="unbounded"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>
        </xs:sequence>
        <xs:attribute name="UID" type="xs:string"/>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>
"""
    + "".join(_session_type(t) for t in SESSION_TYPES)
    + """

  <xs:complexType name="imageScanData" abstract="true">
    <xs:annotation><xs:appinfo><xdat:element displayIdentifiers="ID"/></xs:appinfo></xs:annotation>
    <xs:sequence>
      <xs:element name="image_session_ID" type="xs:string" minOccurs="0"/>
      <xs:element name="note" type="xs:string" minOccurs="0"/>
      <xs:element name="quality" type="xs:string" minOccurs="0"/>
      <xs:element name="condition" type="xs:string" minOccurs="0"/>
      <xs:element name="series_description" type="xs:string" minOccurs="0"/>
      <xs:element name="documentation" type="xs:string" minOccurs="0"/>
      <xs:element name="scanner" type="xs:string" minOccurs="0"/>
      <xs:element name="modality" type="xs:string" minOccurs="0"/>
      <xs:element name="frames" type="xs:integer" minOccurs="0"/>
      <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="type" type="xs:string"/>
    <xs:attribute name="UID" type="xs:string"/>
    <xs:attribute name="project" type="xs:string"/>
  </xs:complexType>
"""
    + "".join(_scan_type(t) for t in SCAN_TYPES)
    + """

  <xs:complexType name="reconstructedImageData">
    <xs:sequence>
      <xs:element name="in" minOccurs="0">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
      <xs:element name="out" minOccurs="0">
        <xs:complexType>
          <xs:sequence>
            <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
          </xs:sequence>
        </xs:complexType>
      </xs:element>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="type" type="xs:string"/>
    <xs:attribute name="baseScanType" type="xs:string"/>
  </xs:complexType>

  <xs:complexType name="derivedData" abstract="true">
    <xs:complexContent>
      <xs:extension base="xnat:experimentData">
        <xs:sequence>
          <xs:element name="provenance" type="xs:string" minOccurs="0"/>
        </xs:sequence>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>

  <xs:complexType name="imageAssessorData" abstract="true">
    <xs:complexContent>
      <xs:extension base="xnat:derivedData">
        <xs:sequence>
          <xs:element name="in" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>
          <xs:element name="out" minOccurs="0">
            <xs:complexType>
              <xs:sequence>
                <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
              </xs:sequence>
            </xs:complexType>
          </xs:element>
          <xs:element name="imageSession_ID" type="xs:string" minOccurs="0"/>
        </xs:sequence>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>

  <xs:complexType name="qcAssessmentData">
    <xs:complexContent>
      <xs:extension base="xnat:imageAssessorData">
        <xs:sequence>
          <xs:element name="type" type="xs:string" minOccurs="0"/>
        </xs:sequence>
      </xs:extension>
    </xs:complexContent>
  </xs:complexType>
"""
    + "".join(f'  <xs:element name="{e}" type="xnat:{t}"/>\n' for e, t in ELEMENTS)
    + "</xs:schema>\n"
)

XDAT_XSD = """<?xml version="1.0" encoding="UTF-8"?>
<xs:schema targetNamespace="http://nrg.wustl.edu/xdat" xmlns:xdat="http://nrg.wustl.edu/xdat"
  xmlns:xs="http://www.w3.org/2001/XMLSchema" elementFormDefault="qualified"
  attributeFormDefault="unqualified">
</xs:schema>
"""

SCHEMAS: dict[str, str] = {"xnat": XNAT_XSD, "xdat": XDAT_XSD}

#: xsi type -> XML root element name (§2.2), for item XML
ROOT_ELEMENTS: dict[str, str] = {f"xnat:{t}": f"xnat:{e}" for e, t in ELEMENTS}


def root_element(xsi_type: str) -> str:
    if xsi_type in ROOT_ELEMENTS:
        return ROOT_ELEMENTS[xsi_type]
    prefix, _, name = xsi_type.partition(":")
    name = name[:-4] if name.endswith("Data") else name
    return f"{prefix}:{name[:1].upper()}{name[1:]}"


#: rows for /data/search/elements (§1.9)
ELEMENT_NAMES: dict[str, tuple[str, str]] = {
    "xnat:projectData": ("Project", "Projects"),
    "xnat:subjectData": ("Subject", "Subjects"),
    "xnat:mrSessionData": ("MR Session", "MR Sessions"),
    "xnat:petSessionData": ("PET Session", "PET Sessions"),
    "xnat:ctSessionData": ("CT Session", "CT Sessions"),
    "xnat:mrScanData": ("MR Scan", "MR Scans"),
    "xnat:qcAssessmentData": ("QC Assessment", "QC Assessments"),
}
