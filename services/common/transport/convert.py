"""Dataclass <-> protobuf conversion, by field name.

The proto messages mirror the dataclasses of stage_api.py and artifacts.py field for field
(tests/test_contract.py holds them to it), so one generic pair of functions converts them all.
A proto field with presence that the sender left unset means "the Python default".
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.common.stage_api import StageResult

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
M = TypeVar("M", bound=Message)


def to_message(obj: Any, message_type: type[M]) -> M:
    message = message_type()
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        target = getattr(message, field.name)
        if dataclasses.is_dataclass(value):
            target.CopyFrom(to_message(value, type(target)))
        elif isinstance(value, (list, tuple)):
            target.extend(value)
        elif isinstance(value, dict):
            target.update(value)
        else:
            setattr(message, field.name, value)
    return message


def from_message(message: Message, cls: type[T]) -> T:
    hints = typing.get_type_hints(cls)
    fields = message.DESCRIPTOR.fields_by_name
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        descriptor = fields[field.name]
        repeated = is_repeated(descriptor)
        unset = not repeated and descriptor.has_presence and not message.HasField(field.name)
        if unset and _has_default(field):
            continue  # the Python default; an unset message without one becomes its defaults below
        value = getattr(message, field.name)
        if repeated:
            kwargs[field.name] = dict(value) if descriptor.message_type and \
                descriptor.message_type.GetOptions().map_entry else list(value)
        elif descriptor.message_type is not None:
            kwargs[field.name] = from_message(value, hints[field.name])
        else:
            kwargs[field.name] = value
    return cls(**kwargs)


def _has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def is_repeated(field: FieldDescriptor) -> bool:
    # protobuf 6 added `is_repeated` and protobuf 7 removed `label`.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == FieldDescriptor.LABEL_REPEATED


def result_to_message(result: StageResult, message_type: type[M]) -> M:
    message = message_type()
    message.keys.update(result.keys)
    message.info.update(result.info)
    return message


def result_from_message(message: Message) -> StageResult:
    return StageResult(keys=dict(message.keys), info=info_from_struct(message.info))


def info_from_struct(struct: Message) -> dict[str, Any]:
    info = json_format.MessageToDict(struct)
    return {k: _whole(v) for k, v in info.items()}


def _whole(value: Any) -> Any:
    """Struct carries every number as a double: give whole numbers back their integer form, in nested
    objects and lists too (assembly's count of each transition, the indices of the clips it re-encoded)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value
