# Finds what the peft target needs: LibTorch (Debian's 1.13 or a pip PyTorch's 2.x; set Torch_DIR or
# CMAKE_PREFIX_PATH for the latter), nlohmann_json and fmt (header-only). Debian's libtorch-dev brings
# libfmt-dev; a pip PyTorch carries fmt's headers in its include folder, which serve when no fmt package
# is installed. Either way fmt is used header-only, so consumers link nothing more.
if(NOT TARGET torch)
  find_package(Torch REQUIRED)
endif()
find_package(nlohmann_json 3.9 REQUIRED)
include(${CMAKE_CURRENT_LIST_DIR}/PeftFmt.cmake)
if(PEFT_FMT_ERROR)
  message(FATAL_ERROR "${PEFT_FMT_ERROR}")
endif()

# Under add_subdirectory(), targets imported here would be visible only in this directory, but the
# consumer's targets link them through peft::peft: make them global.
if(NOT CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR)
  get_directory_property(_peft_imported IMPORTED_TARGETS)
  foreach(_t IN LISTS _peft_imported)
    get_target_property(_global ${_t} IMPORTED_GLOBAL)
    if(NOT _global)
      set_target_properties(${_t} PROPERTIES IMPORTED_GLOBAL TRUE)
    endif()
  endforeach()
endif()
