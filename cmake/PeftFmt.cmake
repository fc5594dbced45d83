# fmt's headers for peft::peft, used header-only: an installed fmt package (Debian's libfmt-dev comes with
# libtorch-dev), else the copy a pip PyTorch 2.x ships in its include folder. Defines the target
# fmt::fmt-header-only, or leaves it undefined and sets PEFT_FMT_ERROR to say why.
# Included by PeftDependencies.cmake (building) and by peft-config.cmake (consuming an installed peft).
set(PEFT_FMT_ERROR "")
if(NOT TARGET fmt::fmt-header-only)
  find_package(fmt QUIET)
endif()
if(NOT TARGET fmt::fmt-header-only)
  get_target_property(_peft_torch_inc torch INTERFACE_INCLUDE_DIRECTORIES)
  find_path(PEFT_FMT_INCLUDE_DIR fmt/format.h HINTS ${_peft_torch_inc} ${TORCH_INCLUDE_DIRS})
  if(PEFT_FMT_INCLUDE_DIR)
    add_library(peft_fmt_headers INTERFACE IMPORTED)
    set_target_properties(peft_fmt_headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${PEFT_FMT_INCLUDE_DIR}"
                          INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY=1)
    add_library(fmt::fmt-header-only ALIAS peft_fmt_headers)
  else()
    set(PEFT_FMT_ERROR "peft needs fmt's headers: install libfmt-dev (Debian) or use a LibTorch that ships them")
  endif()
endif()
