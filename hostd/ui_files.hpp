// The operator's page (hostd/ui/), compiled into hostd by
// cmake/embed_files.cmake so the binary serves it with nothing to install.
#pragma once

#include <string_view>
#include <vector>

namespace vesicle::hostd {

struct UiFile {
  std::string_view name; // the file's name in hostd/ui/, e.g. "app.js"
  std::string_view bytes;
};

extern const std::vector<UiFile> kUiFiles;

} // namespace vesicle::hostd
