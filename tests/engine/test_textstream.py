"""UTF-8 hold-back and stop-string hold-back of the text assembler (no model needed)."""

from sovcli.engine.textstream import TextAssembler


def test_split_multibyte_character_is_held_until_complete():
    text = TextAssembler()
    snowman = "☃".encode()  # 3 bytes
    assert text.feed(b"a" + snowman[:1]) == "a"
    assert text.feed(snowman[1:2]) == ""
    assert text.feed(snowman[2:] + b"b") == "☃b"
    assert text.finish() == ""
    assert text.text == "a☃b"


def test_incomplete_bytes_at_the_end_become_replacement_char():
    text = TextAssembler()
    assert text.feed("é".encode()[:1]) == ""
    assert text.finish() == "\ufffd"


def test_stop_string_across_pieces_is_never_emitted():
    text = TextAssembler(stop=["END"])
    out = [text.feed(b"hello E"), text.feed(b"N"), text.feed(b"D tail")]
    assert "".join(out) == "hello "
    assert text.stopped
    assert text.text == "hello "


def test_false_stop_prefix_is_released():
    text = TextAssembler(stop=["END"])
    assert text.feed(b"an E") == "an "
    assert text.feed(b"ngland") == "England"
    assert not text.stopped
    assert text.feed(b" EN") == " "
    assert text.finish() == "EN"
