"""PIL side of tests/test_image.cpp. Images travel as raw interleaved RGB bytes.

  resize IN.rgb W H OUT_W OUT_H bilinear|bicubic OUT.rgb   PIL's Image.resize
  save IN.rgb W H OUT.(png|jpg|bmp) [grey|rgba]            encode with PIL
  decode IN OUT.rgb                                        decode any format with PIL, as RGB
  shorter_crop IN.rgb W H SIZE OUT.rgb                     torchvision-style Resize(SIZE, BICUBIC) + CenterCrop(SIZE)
"""
import sys

from PIL import Image


def load_raw(path, w, h):
    with open(path, "rb") as f:
        return Image.frombytes("RGB", (w, h), f.read())


def main(argv):
    cmd = argv[1]
    if cmd == "resize":
        img = load_raw(argv[2], int(argv[3]), int(argv[4]))
        filt = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[argv[7]]
        out = img.resize((int(argv[5]), int(argv[6])), filt)
        with open(argv[8], "wb") as f:
            f.write(out.tobytes())
    elif cmd == "save":
        img = load_raw(argv[2], int(argv[3]), int(argv[4]))
        mode = argv[6] if len(argv) > 6 else "rgb"
        if mode == "grey":
            img = img.convert("L")
        elif mode == "rgba":
            img = img.convert("RGBA")
        kwargs = {"quality": 95} if argv[5].endswith(".jpg") else {}
        img.save(argv[5], **kwargs)
    elif cmd == "decode":
        with Image.open(argv[2]) as img:
            data = img.convert("RGB").tobytes()
        with open(argv[3], "wb") as f:
            f.write(data)
    elif cmd == "shorter_crop":
        img = load_raw(argv[2], int(argv[3]), int(argv[4]))
        size = int(argv[5])
        w, h = img.size
        # torchvision.transforms.Resize(int): the shorter side becomes size, the other is truncated.
        if w <= h:
            nw, nh = size, int(size * h / w)
        else:
            nw, nh = int(size * w / h), size
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
        with open(argv[6], "wb") as f:
            f.write(img.tobytes())
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
