"""Run the port's PyFlink controller, unmodified, on JDK 17: ``python pyflink_main.py MAIN.py``.

Test infrastructure for ``tests/seed/port_controller.py``. PyFlink 1.17's
``KafkaSinkBuilder.set_record_serializer`` asks whether the serializer's topic
selector is a Python-side proxy with
``getClass().getCanonicalName().startswith("com.sun.proxy")``. The port's sinks
use a fixed topic, whose selector is a Java lambda; since JDK 15 a lambda's class
is hidden and has no canonical name, so the call fails with ``AttributeError:
'NoneType' object has no attribute 'startswith'`` (FLINK-32327, fixed in 1.18).
This module replaces that one method with one that reads the class's binary name
(never null) and also knows JDK 17's ``jdk.proxy`` prefix, then runs ``MAIN.py``
as ``__main__``.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any

from pyflink.datastream.connectors import kafka
from pyflink.util.java_utils import get_field_value

CACHING_SELECTOR = "KafkaRecordSerializationSchemaBuilder$CachingTopicSelector"
PROXY_PREFIXES = ("com.sun.proxy", "jdk.proxy")


def set_record_serializer(self: Any, record_serializer: Any) -> Any:
    """PyFlink's method, with the proxy test made safe on JDK 15+."""
    schema = record_serializer._j_serialization_schema
    selector = get_field_value(schema, "topicSelector")
    if selector.getClass().getName().endswith(CACHING_SELECTOR):
        inner = get_field_value(selector, "topicSelector").getClass().getName()
        if inner.startswith(PROXY_PREFIXES):
            record_serializer._wrap_serialization_schema()
            self._preprocessing = record_serializer._build_preprocessing()
    self._j_builder.setRecordSerializer(schema)
    return self


def main() -> None:
    kafka.KafkaSinkBuilder.set_record_serializer = set_record_serializer
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
