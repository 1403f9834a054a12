"""Files: write several at once, edit in place, read with truncation and image detection."""
import base64

from bandsox import BandSox, InvalidInputError

bs = BandSox()
vm = bs.create_vm("bandsox/busybox", name="example-files")
try:
    vm.mkdir("/app/logs")
    vm.write_files([
        {"path": "/app/run.sh", "content": b"#!/bin/sh\necho running on port $(cat /app/port)\n",
         "mode": 0o755},
        {"path": "/app/port", "content": "3000"},
    ])
    vm.edit("/app/port", "3000", "8080")
    print(vm.exec_command("/app/run.sh").stdout.strip())        # running on port 8080
    try:
        vm.edit("/app/port", "3000", "9090")
    except InvalidInputError as e:
        print("edit refused:", e.code)                          # edit_no_match

    print("exists:", vm.exists("/app/run.sh"), vm.exists("/app/nope"))
    print("mode:", vm.stat("/app/run.sh")["mode"])            # octal text, e.g. 755

    vm.write("/app/big.txt", "x" * 300_000)
    big = vm.read("/app/big.txt")                               # text: at most 200 KB
    print("truncated:", big["truncated"], len(big["content"]))
    full = b"".join(vm.read_stream("/app/big.txt"))             # all of it, in chunks
    print("streamed:", len(full))

    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAAAAgABVKJPXQAAAABJRU5ErkJggg==")
    vm.write_bytes("/app/dot.png", png)
    img = vm.read("/app/dot.png")
    print("image:", img["type"], img["mime_type"])              # image image/png
    print([e["name"] for e in vm.list_dir("/app")])
finally:
    vm.delete()
