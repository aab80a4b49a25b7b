# -- FITS layout (the rules of fitsync.fits.segment_boundaries) ---------------------------

FITS_BLOCK = 2880
VALID_BITPIX = (8, 16, 32, 64, -32, -64)


class NotFits(ValueError):
    pass


def _card_value(raw):
    text = raw.split("/", 1)[0].strip()
    try:
        return int(text)
    except ValueError:
        raise NotFits("not an integer: %r" % text)


def _hdu_header(read_at, offset, size):
    """(structural keyword values, header size) of the header at ``offset``."""
    values = {}
    pos = offset
    while True:
        if pos + FITS_BLOCK > size:
            raise NotFits("truncated header")
        record = read_at(pos, FITS_BLOCK)
        if len(record) < FITS_BLOCK:
            raise NotFits("truncated header")
        pos += FITS_BLOCK
        for i in range(0, FITS_BLOCK, 80):
            card = record[i:i + 80]
            if card[:8] == b"END     ":
                return values, pos - offset
            text = card.decode("ascii", "replace")
            keyword = text[:8].rstrip()
            if text[8:10] == "= " and keyword not in values:
                values[keyword] = text[10:]


def _data_size(values):
    try:
        bitpix = _card_value(values["BITPIX"])
        naxis = _card_value(values["NAXIS"])
    except KeyError:
        raise NotFits("no BITPIX or NAXIS")
    if bitpix not in VALID_BITPIX or not 0 <= naxis <= 999:
        raise NotFits("bad BITPIX or NAXIS")
    if naxis == 0:
        return 0
    try:
        dims = [_card_value(values["NAXIS%d" % i]) for i in range(1, naxis + 1)]
    except KeyError:
        raise NotFits("missing NAXISn")
    pcount = _card_value(values["PCOUNT"]) if "PCOUNT" in values else 0
    gcount = _card_value(values["GCOUNT"]) if "GCOUNT" in values else 1
    gcount = gcount or 1
    if min(dims) < 0 or pcount < 0 or gcount < 0:
        raise NotFits("negative axis")
    if dims and dims[0] == 0 and naxis > 1:  # random groups
        dims = dims[1:]
    product = 1
    for d in dims:
        product *= d
    return abs(bitpix) // 8 * gcount * (pcount + product)


def fits_boundaries(read_at, size):
    """Every header start and non-empty data unit start; [0] when the file is
    not a complete, well-formed FITS file."""
    if size < FITS_BLOCK or read_at(0, 9) != b"SIMPLE  =":
        return [0]
    bounds = []
    offset = 0
    try:
        while offset < size:
            values, header_size = _hdu_header(read_at, offset, size)
            data = _data_size(values)
            padded = -(-data // FITS_BLOCK) * FITS_BLOCK
            if offset + header_size + padded > size:
                return [0]
            bounds.append(offset)
            if padded:
                bounds.append(offset + header_size)
            offset += header_size + padded
    except NotFits:
        return [0]
    return bounds
